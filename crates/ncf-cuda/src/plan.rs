//! Launch plans: for each op, what runs on the GPU, as data. A [`Plan`] is a short list of
//! [`Step`]s: a kernel [`Launch`] (a typed [`Kernel`], grid, block, dynamic shared memory and
//! the argument values, buffers as raw device addresses) or a cuBLAS [`Sgemm`] call.
//!
//! The builders below are pure functions of buffer addresses and sizes. [`crate::CudaBackend`]
//! calls them with device addresses and executes each step with `cuLaunchKernel` /
//! `cublasSgemm`; `tests/emulated.rs` calls the **same** builders with host addresses and runs
//! the plans on the CUDA emulator (`emu/`), which checks every launch's argument list against
//! the kernel's signature. So the grids, argument lists and the GEMM mapping exist once, here.
//!
//! Plans hold no heap memory (fixed arrays: at most [`MAX_ARGS`] arguments per launch and
//! [`MAX_STEPS`] steps per op), so building one per eager op allocates nothing.
use ncf_core::{AdamHp, Error, Result, SgdHp};

macro_rules! kernels {
    ($($file:literal => { $($variant:ident = $name:literal),+ $(,)? })+) => {
        /// Every `extern "C" __global__` kernel of `kernels/*.cu` (the test
        /// `every_kernel_has_a_variant` checks both ways).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Kernel { $($($variant),+),+ }

        impl Kernel {
            /// Every kernel, in file order; `Kernel::ALL[k as usize] == k`.
            pub const ALL: &'static [Kernel] = &[$($(Kernel::$variant),+),+];

            /// The kernel's name in its `.cu` file (the function `cuModuleGetFunction` loads).
            pub const fn name(self) -> &'static str {
                match self { $($(Kernel::$variant => $name),+),+ }
            }

            /// The file of `kernels/` defining it (a key of [`crate::kernels::SOURCES`]).
            pub const fn file(self) -> &'static str {
                match self { $($(Kernel::$variant => $file),+),+ }
            }
        }
    };
}

kernels! {
    "embedding.cu" => {
        EmbeddingForward = "embedding_forward",
        EmbeddingBackwardAtomic = "embedding_backward_atomic",
        RowsCount = "rows_count",
        RowsScan = "rows_scan",
        RowsPlace = "rows_place",
        RowsSort = "rows_sort",
        EmbeddingBackwardSorted = "embedding_backward_sorted",
        GatherAddRelu = "gather_add_relu",
    }
    "linear.cu" => {
        GemmNaive = "gemm_naive",
        GemmTiled = "gemm_tiled",
        BiasBroadcast = "bias_broadcast",
        BiasGrad = "bias_grad",
        MatvecBias = "matvec_bias",
    }
    "activation.cu" => {
        ReluForward = "relu_forward",
        ReluBackward = "relu_backward",
        BiasReluForward = "bias_relu_forward",
        ReluBiasBackward = "relu_bias_backward",
        SigmoidForward = "sigmoid_forward",
    }
    "loss.cu" => {
        BceWithLogits = "bce_with_logits",
        Mse = "mse",
    }
    "elementwise.cu" => {
        GmfForward = "gmf_forward",
        GmfBackward = "gmf_backward",
        ConcatCols = "concat_cols",
        SplitCols = "split_cols",
        RowdotForward = "rowdot_forward",
        RowdotBackward = "rowdot_backward",
        AddAssign = "add_assign",
        Scale = "scale",
        AddScalar = "add_scalar",
        SumInto = "sum_into",
        Fill = "fill",
    }
    "norm.cu" => {
        Dropout = "dropout",
        BatchnormForwardTrain = "batchnorm_forward_train",
        BatchnormForwardEval = "batchnorm_forward_eval",
        BatchnormBackward = "batchnorm_backward",
    }
    "optim.cu" => {
        SgdStep = "sgd_step",
        SgdStepRows = "sgd_step_rows",
        AdamStep = "adam_step",
        AdamStepRows = "adam_step_rows",
    }
    "eval.cu" => {
        RankOfFirst = "rank_of_first",
        FullRank = "full_rank",
        TopK = "top_k",
    }
    "sample.cu" => {
        SampleBatch = "sample_batch",
        CounterAdd = "counter_add",
    }
    "fused.cu" => {
        FusedTile = "fused_tile",
        FusedDenseAdam = "fused_dense_adam",
        FusedRowsAdam = "fused_rows_adam",
    }
}

impl std::fmt::Display for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A device address (a host address when the emulator runs the plan); 0 is a null pointer.
pub type Addr = u64;

/// One kernel argument, by value, with the exact type of the kernel's parameter.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Arg {
    /// A pointer parameter (`T*` or `const T*`): the buffer's address, or 0 for null.
    Ptr(Addr),
    I32(i32),
    U32(u32),
    I64(i64),
    U64(u64),
    F32(f32),
    F64(f64),
}

impl Arg {
    /// The argument's kind, without its value (what must not depend on sizes).
    pub fn kind(&self) -> &'static str {
        match self {
            Arg::Ptr(_) => "ptr",
            Arg::I32(_) => "i32",
            Arg::U32(_) => "u32",
            Arg::I64(_) => "i64",
            Arg::U64(_) => "u64",
            Arg::F32(_) => "f32",
            Arg::F64(_) => "f64",
        }
    }
}

/// The most arguments a kernel takes (`adam_step_rows`).
pub const MAX_ARGS: usize = 20;
/// The most steps one op takes (the row plan's four launches).
pub const MAX_STEPS: usize = 4;

/// One kernel launch: `cuLaunchKernel(kernel, grid, block, smem, args)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Launch {
    pub kernel: Kernel,
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
    /// Dynamic shared memory, in bytes.
    pub smem: u32,
    args: [Arg; MAX_ARGS],
    nargs: u8,
}

impl Launch {
    /// # Panics
    /// With more than [`MAX_ARGS`] arguments (a bug in a builder, caught by every test).
    pub fn new(kernel: Kernel, (grid, block, smem): Cfg, args: &[Arg]) -> Launch {
        assert!(args.len() <= MAX_ARGS, "{kernel}: {} arguments exceed MAX_ARGS", args.len());
        let mut a = [Arg::U32(0); MAX_ARGS];
        a[..args.len()].copy_from_slice(args);
        Launch { kernel, grid, block, smem, args: a, nargs: args.len() as u8 }
    }

    pub fn args(&self) -> &[Arg] {
        &self.args[..self.nargs as usize]
    }

    /// The same launch over another grid and block (tests run grid-stride kernels on a
    /// deliberately small grid too).
    pub fn with_cfg(mut self, grid: (u32, u32, u32), block: (u32, u32, u32)) -> Launch {
        self.grid = grid;
        self.block = block;
        self
    }
}

impl std::fmt::Display for Launch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ((gx, gy, gz), (bx, by, bz)) = (self.grid, self.block);
        write!(f, "{} grid ({gx},{gy},{gz}) block ({bx},{by},{bz})", self.kernel)?;
        if self.smem > 0 {
            write!(f, " smem {}", self.smem)?;
        }
        Ok(())
    }
}

/// `cublasSgemm` in cuBLAS's column-major terms: `C (m,n) = alpha·op(A)·op(B) + beta·C`, with
/// `A` = `a`, `B` = `b` (see [`cublas_args`] for how a row-major product maps to it).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sgemm {
    pub trans_a: bool,
    pub trans_b: bool,
    pub m: i32,
    pub n: i32,
    pub k: i32,
    pub alpha: f32,
    pub a: Addr,
    pub lda: i32,
    pub b: Addr,
    pub ldb: i32,
    pub beta: f32,
    pub c: Addr,
    pub ldc: i32,
}

/// One step of a plan.
// Unboxed on purpose: a plan is a fixed array of steps, so building one allocates nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Step {
    Kernel(Launch),
    Gemm(Sgemm),
}

/// An op's steps, in order (at most [`MAX_STEPS`]; possibly none, e.g. an empty product).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Plan {
    steps: [Step; MAX_STEPS],
    len: u8,
}

impl Plan {
    pub fn empty() -> Plan {
        const FILLER: Step = Step::Gemm(Sgemm {
            trans_a: false,
            trans_b: false,
            m: 0,
            n: 0,
            k: 0,
            alpha: 0.0,
            a: 0,
            lda: 1,
            b: 0,
            ldb: 1,
            beta: 0.0,
            c: 0,
            ldc: 1,
        });
        Plan { steps: [FILLER; MAX_STEPS], len: 0 }
    }

    pub fn one(l: Launch) -> Plan {
        Plan::empty().then(Step::Kernel(l))
    }

    /// This plan followed by `s`.
    ///
    /// # Panics
    /// Past [`MAX_STEPS`] steps (a builder bug).
    pub fn then(mut self, s: Step) -> Plan {
        assert!((self.len as usize) < MAX_STEPS, "a plan holds at most {MAX_STEPS} steps");
        self.steps[self.len as usize] = s;
        self.len += 1;
        self
    }

    /// This plan followed by `other`'s steps.
    pub fn and(self, other: Plan) -> Plan {
        other.steps().iter().fold(self, |p, &s| p.then(s))
    }

    pub fn steps(&self) -> &[Step] {
        &self.steps[..self.len as usize]
    }

    /// The kernel launches, without the cuBLAS calls.
    pub fn launches(&self) -> impl Iterator<Item = &Launch> {
        self.steps().iter().filter_map(|s| match s {
            Step::Kernel(l) => Some(l),
            Step::Gemm(_) => None,
        })
    }

    /// The only step, when it is a launch (what most ops are).
    pub fn launch(&self) -> Option<&Launch> {
        match self.steps() {
            [Step::Kernel(l)] => Some(l),
            _ => None,
        }
    }
}

// ---- Launch configurations ----------------------------------------------------------------

/// `(grid, block, dynamic shared bytes)`.
pub type Cfg = ((u32, u32, u32), (u32, u32, u32), u32);

/// Threads per block of the 1-D kernels.
pub const BLOCK: u32 = 256;
/// Blocks of the single-launch loss reduction (its partial sums buffer holds this many floats).
pub const LOSS_BLOCKS: u32 = 64;
/// The largest `gridDim.y` / `gridDim.z`.
pub const MAX_GRID_Y: u32 = 65_535;

/// A grid-stride launch covering `n` elements (at most 65,535 blocks: the kernels loop).
pub fn grid(n: usize) -> Cfg {
    let blocks = n.div_ceil(BLOCK as usize).clamp(1, 65_535) as u32;
    ((blocks, 1, 1), (BLOCK, 1, 1), 0)
}

/// One warp per row.
pub fn warps(rows: usize) -> Cfg {
    let blocks = (rows * 32).div_ceil(BLOCK as usize).max(1) as u32;
    ((blocks, 1, 1), (BLOCK, 1, 1), 0)
}

/// One block of `BLOCK` threads per item (column, user, …).
pub fn per_block(n: usize) -> Cfg {
    ((n.max(1) as u32, 1, 1), (BLOCK, 1, 1), 0)
}

/// One block of `threads` threads.
pub fn single(threads: u32) -> Cfg {
    ((1, 1, 1), (threads, 1, 1), 0)
}

/// `v` as the kernels' 32-bit sizes.
pub fn i32_of(op: &'static str, what: &'static str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::invalid(op, what, format!("{v} exceeds the GPU kernels' 32-bit sizes")))
}

fn i64_of(v: usize) -> Arg {
    Arg::I64(v as i64)
}

// ---- The GEMM mapping --------------------------------------------------------------------

/// Which matrix multiply the dense layers use (`--gemm` on the GPU).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GpuGemm {
    /// One thread per output element (the reference).
    Naive,
    /// The hand-written shared-memory kernel tuned for NCF's tall-skinny shapes.
    Tiled,
    /// cuBLAS `sgemm`.
    Cublas,
}

/// cuBLAS (column-major) arguments for the row-major product `C (M,N) = op(A)·op(B)`, where
/// `A` is `(M,K)` (or `(K,M)` if `ta`) and `B` is `(K,N)` (or `(N,K)` if `tb`), all row-major.
///
/// Row-major `C = A'·B'` is column-major `Cᵀ = B'ᵀ·A'ᵀ`, so `B` is cuBLAS's *first* operand. A
/// row-major `(R,C)` buffer read column-major is the `(C,R)` matrix, its transpose, with leading
/// dimension `C`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CublasArgs {
    pub trans_first: bool,
    pub trans_second: bool,
    pub m: i32,
    pub n: i32,
    pub k: i32,
    pub ld_first: i32,
    pub ld_second: i32,
    pub ldc: i32,
}

pub fn cublas_args(m: i32, n: i32, k: i32, ta: bool, tb: bool) -> CublasArgs {
    CublasArgs {
        trans_first: tb,
        trans_second: ta,
        m: n,
        n: m,
        k,
        ld_first: if tb { k } else { n },
        ld_second: if ta { m } else { k },
        ldc: n,
    }
}

/// What a GEMM adds after the product: nothing, `C += bias` per column, or that and
/// `relu = max(C, 0)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Epilogue {
    None,
    Bias(Addr),
    BiasRelu(Addr, Addr),
}

/// `C (M,N) = alpha·op(A)·op(B) + beta·C`, row-major (see `kernels/linear.cu`), then the
/// epilogue. The hand-written kernels do the epilogue in the same launch; cuBLAS has none here,
/// so its plan adds one `bias_relu_forward` pass. `gemm_tiled` puts the 64-row tiles of `M` on
/// `grid.x` (any `M` the kernel's `int` sizes hold, e.g. `prepare_scoring` over a 100 M-row
/// table) and the 16-column tiles of `N` on `grid.y`, so it takes `N ≤ 65,535 · 16`.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    op: &'static str,
    gemm: GpuGemm,
    (a, b, c): (Addr, Addr, Addr),
    (m, n, k): (usize, usize, usize),
    (ta, tb): (bool, bool),
    (alpha, beta): (f32, f32),
    epilogue: Epilogue,
) -> Result<Plan> {
    if m == 0 || n == 0 {
        return Ok(Plan::empty());
    }
    let (mi, ni, ki) = (i32_of(op, "m", m)?, i32_of(op, "n", n)?, i32_of(op, "k", k)?);
    let (bias, relu) = match epilogue {
        Epilogue::None => (0, 0),
        Epilogue::Bias(bias) => (bias, 0),
        Epilogue::BiasRelu(bias, relu) => (bias, relu),
    };
    match gemm {
        GpuGemm::Cublas => {
            let g = cublas_args(mi, ni, ki, ta, tb);
            let call = Sgemm {
                trans_a: g.trans_first,
                trans_b: g.trans_second,
                m: g.m,
                n: g.n,
                k: g.k,
                alpha,
                a: b,
                lda: g.ld_first,
                b: a,
                ldb: g.ld_second,
                beta,
                c,
                ldc: g.ldc,
            };
            let plan = Plan::empty().then(Step::Gemm(call));
            Ok(match epilogue {
                Epilogue::None => plan,
                _ => {
                    let args = [Arg::Ptr(c), Arg::Ptr(bias), Arg::Ptr(relu), Arg::I32(mi), Arg::I32(ni)];
                    plan.then(Step::Kernel(Launch::new(Kernel::BiasReluForward, grid(m * n), &args)))
                }
            })
        }
        GpuGemm::Naive | GpuGemm::Tiled => {
            let (kernel, cfg) = if gemm == GpuGemm::Naive {
                (Kernel::GemmNaive, grid(m * n))
            } else {
                let (tiles_m, tiles_n) = (m.div_ceil(64), n.div_ceil(16));
                if tiles_n > MAX_GRID_Y as usize {
                    return Err(Error::invalid(op, "n", format!("{n} columns exceed gemm_tiled's grid (65,535 × 16)")));
                }
                // `m` fits an i32 (checked above), so its tiles fit grid.x (≤ 2^31 − 1).
                (Kernel::GemmTiled, ((tiles_m as u32, tiles_n as u32, 1), (256, 1, 1), 0))
            };
            let args = [
                Arg::Ptr(a),
                Arg::Ptr(b),
                Arg::Ptr(c),
                Arg::I32(mi),
                Arg::I32(ni),
                Arg::I32(ki),
                Arg::I32(ta as i32),
                Arg::I32(tb as i32),
                Arg::F32(alpha),
                Arg::F32(beta),
                Arg::Ptr(bias),
                Arg::Ptr(relu),
            ];
            Ok(Plan::one(Launch::new(kernel, cfg, &args)))
        }
    }
}

// ---- Dense layers ------------------------------------------------------------------------

/// `out (B,O) = inp (B,I) · wᵀ + bias`: `matvec_bias` for `o = 1` (but with the naive GEMM),
/// else the GEMM with the bias in its epilogue; with cuBLAS, `bias_broadcast` then `sgemm`
/// with `beta = 1`.
#[allow(clippy::too_many_arguments)]
pub fn linear_forward(
    g: GpuGemm,
    inp: Addr,
    w: Addr,
    bias: Addr,
    out: Addr,
    b: usize,
    i: usize,
    o: usize,
) -> Result<Plan> {
    const OP: &str = "linear_forward";
    let (bi, ii, oi) = (i32_of(OP, "b", b)?, i32_of(OP, "i", i)?, i32_of(OP, "o", o)?);
    if o == 1 && g != GpuGemm::Naive {
        let args = [Arg::Ptr(inp), Arg::Ptr(w), Arg::Ptr(bias), Arg::Ptr(out), Arg::I32(bi), Arg::I32(ii)];
        return Ok(Plan::one(Launch::new(Kernel::MatvecBias, warps(b), &args)));
    }
    if g == GpuGemm::Cublas {
        let args = [Arg::Ptr(bias), Arg::Ptr(out), Arg::I32(bi), Arg::I32(oi)];
        let first = Plan::one(Launch::new(Kernel::BiasBroadcast, grid(b * o), &args));
        return Ok(first.and(gemm(OP, g, (inp, w, out), (b, o, i), (false, true), (1.0, 1.0), Epilogue::None)?));
    }
    gemm(OP, g, (inp, w, out), (b, o, i), (false, true), (1.0, 0.0), Epilogue::Bias(bias))
}

/// `z = inp·wᵀ + bias` and `x = relu(z)`, from the GEMM's epilogue.
#[allow(clippy::too_many_arguments)]
pub fn linear_relu_forward(
    g: GpuGemm,
    inp: Addr,
    w: Addr,
    bias: Addr,
    z: Addr,
    x: Addr,
    b: usize,
    i: usize,
    o: usize,
) -> Result<Plan> {
    gemm("linear_relu_forward", g, (inp, w, z), (b, o, i), (false, true), (1.0, 0.0), Epilogue::BiasRelu(bias, x))
}

/// The dense layer's two backward GEMMs: `dinp (B,I) = dout (B,O) · w (O,I)` (when asked) and
/// `dw (O,I) += doutᵀ (O,B) · inp (B,I)`.
#[allow(clippy::too_many_arguments)]
fn dense_backward_gemms(
    op: &'static str,
    g: GpuGemm,
    dout: Addr,
    inp: Addr,
    w: Addr,
    dinp: Option<Addr>,
    dw: Addr,
    (b, i, o): (usize, usize, usize),
) -> Result<Plan> {
    let first = match dinp {
        Some(dinp) => gemm(op, g, (dout, w, dinp), (b, i, o), (false, false), (1.0, 0.0), Epilogue::None)?,
        None => Plan::empty(),
    };
    Ok(first.and(gemm(op, g, (dout, inp, dw), (o, i, b), (true, false), (1.0, 1.0), Epilogue::None)?))
}

/// The two backward GEMMs, then `dbias += Σ_b dout` (one block per column).
#[allow(clippy::too_many_arguments)]
pub fn linear_backward(
    g: GpuGemm,
    dout: Addr,
    inp: Addr,
    w: Addr,
    dinp: Option<Addr>,
    dw: Addr,
    dbias: Addr,
    b: usize,
    i: usize,
    o: usize,
) -> Result<Plan> {
    const OP: &str = "linear_backward";
    let gemms = dense_backward_gemms(OP, g, dout, inp, w, dinp, dw, (b, i, o))?;
    let (bi, oi) = (i32_of(OP, "b", b)?, i32_of(OP, "o", o)?);
    let args = [Arg::Ptr(dout), Arg::Ptr(dbias), Arg::I32(bi), Arg::I32(oi)];
    Ok(gemms.then(Step::Kernel(Launch::new(Kernel::BiasGrad, per_block(o), &args))))
}

/// `dz = dx·[x > 0]` and `dbias += Σ_b dz` in one pass (one block per column), then the two
/// backward GEMMs on `dz`.
#[allow(clippy::too_many_arguments)]
pub fn linear_relu_backward(
    g: GpuGemm,
    x: Addr,
    dx: Addr,
    dz: Addr,
    inp: Addr,
    w: Addr,
    dinp: Option<Addr>,
    dw: Addr,
    dbias: Addr,
    b: usize,
    i: usize,
    o: usize,
) -> Result<Plan> {
    const OP: &str = "linear_relu_backward";
    let (bi, oi) = (i32_of(OP, "b", b)?, i32_of(OP, "o", o)?);
    let args = [Arg::Ptr(x), Arg::Ptr(dx), Arg::Ptr(dz), Arg::Ptr(dbias), Arg::I32(bi), Arg::I32(oi)];
    let first = Plan::one(Launch::new(Kernel::ReluBiasBackward, per_block(o), &args));
    Ok(first.and(dense_backward_gemms(OP, g, dz, inp, w, dinp, dw, (b, i, o))?))
}

// ---- Embeddings and the row plan ---------------------------------------------------------

/// `out[r] = table[ids[r]]`, one thread per element.
pub fn embedding_forward(table: Addr, ids: Addr, out: Addr, b: usize, d: usize) -> Result<Plan> {
    const OP: &str = "embedding_forward";
    let (bi, di) = (i32_of(OP, "b", b)?, i32_of(OP, "d", d)?);
    let args = [Arg::Ptr(table), Arg::Ptr(ids), Arg::Ptr(out), Arg::I32(bi), Arg::I32(di)];
    Ok(Plan::one(Launch::new(Kernel::EmbeddingForward, grid(b * d), &args)))
}

/// `out = relu(a[ia] + c[ic])`.
pub fn gather_add_relu((a, ia): (Addr, Addr), (c, ic): (Addr, Addr), out: Addr, b: usize, d: usize) -> Result<Plan> {
    const OP: &str = "gather_add_relu";
    let (bi, di) = (i32_of(OP, "b", b)?, i32_of(OP, "d", d)?);
    let args = [Arg::Ptr(a), Arg::Ptr(ia), Arg::Ptr(c), Arg::Ptr(ic), Arg::Ptr(out), Arg::I32(bi), Arg::I32(di)];
    Ok(Plan::one(Launch::new(Kernel::GatherAddRelu, grid(b * d), &args)))
}

/// The fast scatter-add: `dtable[ids[r]] += dout[r]` with float atomics.
pub fn embedding_backward_atomic(dout: Addr, ids: Addr, dtable: Addr, b: usize, d: usize) -> Result<Plan> {
    const OP: &str = "embedding_backward";
    if b == 0 || d == 0 {
        return Ok(Plan::empty());
    }
    let (bi, di) = (i32_of(OP, "b", b)?, i32_of(OP, "d", d)?);
    let args = [Arg::Ptr(dout), Arg::Ptr(ids), Arg::Ptr(dtable), Arg::I32(bi), Arg::I32(di)];
    Ok(Plan::one(Launch::new(Kernel::EmbeddingBackwardAtomic, grid(b * d), &args)))
}

/// The buffers of one id buffer's row plan (its distinct rows ascending, and each row's batch
/// positions in batch order): `count` and `fill` hold a table's `n` rows (`count` all zero
/// between plans), `order`, `uniq` the id buffer's capacity, `seg` one more, `nuniq` one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowPlanBufs {
    /// u32 per table row, all zero between plans.
    pub count: Addr,
    /// u32 per table row, all `u32::MAX` between plans.
    pub first: Addr,
    pub fill: Addr,
    pub order: Addr,
    pub seg: Addr,
    pub uniq: Addr,
    pub nuniq: Addr,
}

/// The row plan of `ids[..b]` (ids `< n`, of capacity `cap`), built on the device in four
/// launches (`rows_count`, `rows_scan`, `rows_place`, `rows_sort`) whose grids and work follow
/// the batch: `n` sizes the buffers, not the plan.
pub fn row_plan(ids: Addr, p: &RowPlanBufs, b: usize, n: usize, cap: usize) -> Result<Plan> {
    const OP: &str = "row_plan";
    let (bi, ci) = (i32_of(OP, "b", b)?, i32_of(OP, "cap", cap)?);
    i32_of(OP, "n", n)?;
    let count =
        Launch::new(Kernel::RowsCount, grid(b), &[Arg::Ptr(ids), Arg::I32(bi), Arg::Ptr(p.count), Arg::Ptr(p.first)]);
    let scan_args = [
        Arg::Ptr(ids),
        Arg::I32(bi),
        Arg::Ptr(p.first),
        Arg::Ptr(p.count),
        Arg::Ptr(p.fill),
        Arg::Ptr(p.uniq),
        Arg::Ptr(p.seg),
        Arg::Ptr(p.nuniq),
    ];
    let scan = Launch::new(Kernel::RowsScan, single(1024), &scan_args);
    let place =
        Launch::new(Kernel::RowsPlace, grid(b), &[Arg::Ptr(ids), Arg::I32(bi), Arg::Ptr(p.fill), Arg::Ptr(p.order)]);
    let sort_args = [
        Arg::Ptr(p.order),
        Arg::Ptr(p.seg),
        Arg::Ptr(p.nuniq),
        Arg::I32(ci),
        Arg::Ptr(p.uniq),
        Arg::Ptr(p.count),
        Arg::Ptr(p.first),
    ];
    let sort = Launch::new(Kernel::RowsSort, grid(cap), &sort_args);
    Ok(Plan::one(count).then(Step::Kernel(scan)).then(Step::Kernel(place)).then(Step::Kernel(sort)))
}

/// The deterministic scatter-add: each distinct row of the row plan sums its batch positions
/// in batch order.
pub fn embedding_backward_sorted(dout: Addr, p: &RowPlanBufs, dtable: Addr, b: usize, d: usize) -> Result<Plan> {
    const OP: &str = "embedding_backward";
    if b == 0 || d == 0 {
        return Ok(Plan::empty());
    }
    let (ci, di) = (i32_of(OP, "cap", b)?, i32_of(OP, "d", d)?);
    let args = [
        Arg::Ptr(dout),
        Arg::Ptr(p.order),
        Arg::Ptr(p.seg),
        Arg::Ptr(p.uniq),
        Arg::Ptr(p.nuniq),
        Arg::Ptr(dtable),
        Arg::I32(ci),
        Arg::I32(di),
    ];
    Ok(Plan::one(Launch::new(Kernel::EmbeddingBackwardSorted, grid(b * d), &args)))
}

// ---- Element-wise ------------------------------------------------------------------------

/// A grid-stride kernel over `n` elements taking `bufs…, n (i64)` plus `tail` scalars.
fn elementwise(kernel: Kernel, bufs: &[Addr], n: usize, tail: &[Arg]) -> Plan {
    let mut args = [Arg::U32(0); MAX_ARGS];
    let mut k = 0;
    for &p in bufs {
        args[k] = Arg::Ptr(p);
        k += 1;
    }
    args[k] = i64_of(n);
    k += 1;
    for &t in tail {
        args[k] = t;
        k += 1;
    }
    Plan::one(Launch::new(kernel, grid(n), &args[..k]))
}

pub fn fill(buf: Addr, n: usize, value: f32) -> Plan {
    Plan::one(Launch::new(Kernel::Fill, grid(n), &[Arg::Ptr(buf), Arg::F32(value), i64_of(n)]))
}
pub fn relu_forward(inp: Addr, out: Addr, n: usize) -> Plan {
    elementwise(Kernel::ReluForward, &[inp, out], n, &[])
}
pub fn relu_backward(out: Addr, dout: Addr, dinp: Addr, n: usize) -> Plan {
    elementwise(Kernel::ReluBackward, &[out, dout, dinp], n, &[])
}
pub fn sigmoid_forward(inp: Addr, out: Addr, n: usize) -> Plan {
    elementwise(Kernel::SigmoidForward, &[inp, out], n, &[])
}
pub fn gmf_forward(u: Addr, v: Addr, out: Addr, n: usize) -> Plan {
    elementwise(Kernel::GmfForward, &[u, v, out], n, &[])
}
pub fn gmf_backward(dout: Addr, u: Addr, v: Addr, du: Addr, dv: Addr, n: usize) -> Plan {
    elementwise(Kernel::GmfBackward, &[dout, u, v, du, dv], n, &[])
}
pub fn add_assign(out: Addr, x: Addr, n: usize) -> Plan {
    elementwise(Kernel::AddAssign, &[out, x], n, &[])
}
/// `x *= s`, one grid-stride launch.
pub fn scale(x: Addr, n: usize, s: f32) -> Plan {
    Plan::one(Launch::new(Kernel::Scale, grid(n), &[Arg::Ptr(x), Arg::F32(s), i64_of(n)]))
}
pub fn add_scalar(out: Addr, s: Addr, n: usize) -> Plan {
    elementwise(Kernel::AddScalar, &[out, s], n, &[])
}

/// `acc[0] += Σ x`, one block of 1024 threads (a fixed summation order).
pub fn sum_into(x: Addr, n: usize, acc: Addr) -> Plan {
    Plan::one(Launch::new(Kernel::SumInto, single(1024), &[Arg::Ptr(x), i64_of(n), Arg::Ptr(acc)]))
}

/// `bias_relu_forward` alone: `z += bias` per column and `x = relu(z)` when `x` is not null
/// (the cuBLAS path's epilogue; [`gemm`] plans it).
pub fn bias_relu_forward(z: Addr, bias: Addr, x: Addr, b: usize, o: usize) -> Result<Plan> {
    const OP: &str = "bias_relu_forward";
    let (bi, oi) = (i32_of(OP, "b", b)?, i32_of(OP, "o", o)?);
    let args = [Arg::Ptr(z), Arg::Ptr(bias), Arg::Ptr(x), Arg::I32(bi), Arg::I32(oi)];
    Ok(Plan::one(Launch::new(Kernel::BiasReluForward, grid(b * o), &args)))
}

pub fn concat_cols((a, da): (Addr, usize), (c, dc): (Addr, usize), b: usize, out: Addr) -> Result<Plan> {
    const OP: &str = "concat_cols";
    let (dai, dci, bi) = (i32_of(OP, "da", da)?, i32_of(OP, "dc", dc)?, i32_of(OP, "b", b)?);
    let args = [Arg::Ptr(a), Arg::I32(dai), Arg::Ptr(c), Arg::I32(dci), Arg::Ptr(out), Arg::I32(bi)];
    Ok(Plan::one(Launch::new(Kernel::ConcatCols, grid(b * (da + dc)), &args)))
}

pub fn split_cols(dout: Addr, (da, dc): (usize, usize), b: usize, grad_a: Addr, grad_c: Addr) -> Result<Plan> {
    const OP: &str = "split_cols";
    let (dai, dci, bi) = (i32_of(OP, "da", da)?, i32_of(OP, "dc", dc)?, i32_of(OP, "b", b)?);
    let args = [Arg::Ptr(dout), Arg::I32(dai), Arg::I32(dci), Arg::Ptr(grad_a), Arg::Ptr(grad_c), Arg::I32(bi)];
    Ok(Plan::one(Launch::new(Kernel::SplitCols, grid(b * (da + dc)), &args)))
}

/// `out[r] = u[r]·v[r]`, one warp per row.
pub fn rowdot_forward(u: Addr, v: Addr, b: usize, d: usize, out: Addr) -> Result<Plan> {
    const OP: &str = "rowdot_forward";
    let (bi, di) = (i32_of(OP, "b", b)?, i32_of(OP, "d", d)?);
    let args = [Arg::Ptr(u), Arg::Ptr(v), Arg::Ptr(out), Arg::I32(bi), Arg::I32(di)];
    Ok(Plan::one(Launch::new(Kernel::RowdotForward, warps(b), &args)))
}

pub fn rowdot_backward(dout: Addr, u: Addr, v: Addr, b: usize, d: usize, du: Addr, dv: Addr) -> Result<Plan> {
    const OP: &str = "rowdot_backward";
    let (bi, di) = (i32_of(OP, "b", b)?, i32_of(OP, "d", d)?);
    let args = [Arg::Ptr(dout), Arg::Ptr(u), Arg::Ptr(v), Arg::Ptr(du), Arg::Ptr(dv), Arg::I32(bi), Arg::I32(di)];
    Ok(Plan::one(Launch::new(Kernel::RowdotBackward, grid(b * d), &args)))
}

// ---- Dropout and batch norm -------------------------------------------------------------

/// `dropout(inp, out, n, seed, thr, scale)`, grid-stride (`thr`, `scale` from `p` as on the CPU).
pub fn dropout(inp: Addr, out: Addr, n: usize, p: f64, seed: u64) -> Plan {
    let thr = ncf_core::rng::dropout_threshold(p);
    let scale = (1.0 / (1.0 - p)) as f32;
    elementwise(Kernel::Dropout, &[inp, out], n, &[Arg::U64(seed), Arg::U32(thr), Arg::F32(scale)])
}

/// Training-mode batch norm: one thread per column (`x, y, xhat (B,H)`; the rest `(H)`).
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_forward_train(
    (x, gamma, beta): (Addr, Addr, Addr),
    (y, xhat, inv): (Addr, Addr, Addr),
    (rmean, rvar): (Addr, Addr),
    b: usize,
    h: usize,
    eps: f64,
    momentum: f64,
) -> Result<Plan> {
    const OP: &str = "batchnorm_forward_train";
    let (bi, hi) = (i32_of(OP, "b", b)?, i32_of(OP, "h", h)?);
    let args = [
        Arg::Ptr(x),
        Arg::Ptr(gamma),
        Arg::Ptr(beta),
        Arg::Ptr(y),
        Arg::Ptr(xhat),
        Arg::Ptr(inv),
        Arg::Ptr(rmean),
        Arg::Ptr(rvar),
        Arg::I32(bi),
        Arg::I32(hi),
        Arg::F32(eps as f32),
        Arg::F64(momentum),
    ];
    Ok(Plan::one(Launch::new(Kernel::BatchnormForwardTrain, grid(h), &args)))
}

/// Eval-mode batch norm, grid-stride over the `B·H` elements.
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_forward_eval(
    (x, gamma, beta): (Addr, Addr, Addr),
    (rmean, rvar): (Addr, Addr),
    y: Addr,
    b: usize,
    h: usize,
    eps: f64,
) -> Result<Plan> {
    const OP: &str = "batchnorm_forward_eval";
    let (bi, hi) = (i32_of(OP, "b", b)?, i32_of(OP, "h", h)?);
    let args = [
        Arg::Ptr(x),
        Arg::Ptr(gamma),
        Arg::Ptr(beta),
        Arg::Ptr(rmean),
        Arg::Ptr(rvar),
        Arg::Ptr(y),
        Arg::I32(bi),
        Arg::I32(hi),
        Arg::F32(eps as f32),
    ];
    Ok(Plan::one(Launch::new(Kernel::BatchnormForwardEval, grid(b * h), &args)))
}

/// The training-mode backward: one thread per column.
pub fn batchnorm_backward(
    (dy, xhat, gamma, inv): (Addr, Addr, Addr, Addr),
    (dx, dgamma, dbeta): (Addr, Addr, Addr),
    b: usize,
    h: usize,
) -> Result<Plan> {
    const OP: &str = "batchnorm_backward";
    let (bi, hi) = (i32_of(OP, "b", b)?, i32_of(OP, "h", h)?);
    let args = [
        Arg::Ptr(dy),
        Arg::Ptr(xhat),
        Arg::Ptr(gamma),
        Arg::Ptr(inv),
        Arg::Ptr(dx),
        Arg::Ptr(dgamma),
        Arg::Ptr(dbeta),
        Arg::I32(bi),
        Arg::I32(hi),
    ];
    Ok(Plan::one(Launch::new(Kernel::BatchnormBackward, grid(h), &args)))
}

// ---- Losses ------------------------------------------------------------------------------

/// The two mean losses of `loss.cu` (same signature).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loss {
    BceWithLogits,
    Mse,
}

/// A mean loss over `b` rows in one launch of `min(⌈b/256⌉, 64)` blocks: the kernel writes
/// the gradient, and its last block adds `(1/b)·Σ partials` into `loss[0]` in a fixed order.
/// `partials` (`LOSS_BLOCKS` floats) and the finished-block counter `done` persist across
/// calls.
#[allow(clippy::too_many_arguments)]
pub fn mean_loss(
    loss_fn: Loss,
    x: Addr,
    y: Addr,
    dx: Addr,
    (partials, done): (Addr, Addr),
    loss: Addr,
    b: usize,
) -> Result<Plan> {
    let (kernel, op) = match loss_fn {
        Loss::BceWithLogits => (Kernel::BceWithLogits, "bce_with_logits"),
        Loss::Mse => (Kernel::Mse, "mse"),
    };
    if b == 0 {
        return Err(Error::invalid(op, "b", "a mean over an empty batch"));
    }
    let bi = i32_of(op, "b", b)?;
    let blocks = (b.div_ceil(BLOCK as usize) as u32).clamp(1, LOSS_BLOCKS);
    let args =
        [Arg::Ptr(x), Arg::Ptr(y), Arg::Ptr(dx), Arg::Ptr(partials), Arg::Ptr(done), Arg::Ptr(loss), Arg::I32(bi)];
    Ok(Plan::one(Launch::new(kernel, ((blocks, 1, 1), (BLOCK, 1, 1), 0), &args)))
}

// ---- Optimizers --------------------------------------------------------------------------

/// SGD's scalars in f32, from the f64 hyperparameters (as `ops/optim.rs` on the CPU): lr, mu,
/// l2, shrink.
fn sgd_scalars(hp: &SgdHp) -> [Arg; 4] {
    [
        Arg::F32(hp.lr as f32),
        Arg::F32(hp.momentum as f32),
        Arg::F32(hp.decay.l2() as f32),
        Arg::F32((1.0 - hp.lr * hp.decay.decoupled()) as f32),
    ]
}

/// Adam's scalars as the kernels take them: the moment rates in f32 rounded from f64 (as the
/// CPU's `AdamScalars`), and lr, β₁, β₂ in f64 for the bias corrections the kernel computes
/// from the device's step count: b1, omb1, b2, omb2, lr, beta1, beta2, eps, l2, shrink.
fn adam_scalars(hp: &AdamHp) -> [Arg; 10] {
    [
        Arg::F32(hp.beta1 as f32),
        Arg::F32((1.0 - hp.beta1) as f32),
        Arg::F32(hp.beta2 as f32),
        Arg::F32((1.0 - hp.beta2) as f32),
        Arg::F64(hp.lr),
        Arg::F64(hp.beta1),
        Arg::F64(hp.beta2),
        Arg::F32(hp.eps as f32),
        Arg::F32(hp.decay.l2() as f32),
        Arg::F32((1.0 - hp.lr * hp.decay.decoupled()) as f32),
    ]
}

pub fn sgd_step(p: Addr, g: Addr, mom: Addr, n: usize, hp: &SgdHp) -> Plan {
    elementwise(Kernel::SgdStep, &[p, g, mom], n, &sgd_scalars(hp))
}

/// `t` is the device's step counter (one u32).
#[allow(clippy::too_many_arguments)]
pub fn adam_step(p: Addr, g: Addr, m: Addr, v: Addr, n: usize, hp: &AdamHp, t: Addr) -> Plan {
    let s = adam_scalars(hp);
    let mut tail = [Arg::Ptr(t); 11];
    tail[..10].copy_from_slice(&s);
    elementwise(Kernel::AdamStep, &[p, g, m, v], n, &tail)
}

/// A lazy optimizer's row list as its kernels take it: `rows` (capacity `cap`), `nrows_host`,
/// and `nrows_dev` (the device count of a `unique_ids` output, or null for a host-written
/// list).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rows {
    pub list: Addr,
    pub cap: usize,
    pub nrows_host: usize,
    pub nrows_dev: Option<Addr>,
}

impl Rows {
    fn args(&self, op: &'static str, d: usize) -> Result<[Arg; 5]> {
        let (ci, di) = (i32_of(op, "cap", self.cap)?, i32_of(op, "d", d)?);
        Ok([
            Arg::Ptr(self.list),
            Arg::I32(self.nrows_host.min(i32::MAX as usize) as i32),
            Arg::Ptr(self.nrows_dev.unwrap_or(0)),
            Arg::I32(ci),
            Arg::I32(di),
        ])
    }
}

/// SGD on the listed rows of `(n, d)` tables, one thread per (row slot, column): the grid
/// covers the list's capacity, not the table.
pub fn sgd_step_rows(p: Addr, g: Addr, mom: Addr, rows: &Rows, d: usize, hp: &SgdHp) -> Result<Plan> {
    let mut args = [Arg::U32(0); 12];
    args[..3].copy_from_slice(&[Arg::Ptr(p), Arg::Ptr(g), Arg::Ptr(mom)]);
    args[3..8].copy_from_slice(&rows.args("sgd_step_rows", d)?);
    args[8..].copy_from_slice(&sgd_scalars(hp));
    Ok(Plan::one(Launch::new(Kernel::SgdStepRows, grid(rows.cap * d), &args)))
}

/// Adam on the listed rows (see [`sgd_step_rows`]); `t` the device's step counter.
#[allow(clippy::too_many_arguments)]
pub fn adam_step_rows(p: Addr, g: Addr, m: Addr, v: Addr, rows: &Rows, d: usize, hp: &AdamHp, t: Addr) -> Result<Plan> {
    let mut args = [Arg::U32(0); 20];
    args[..4].copy_from_slice(&[Arg::Ptr(p), Arg::Ptr(g), Arg::Ptr(m), Arg::Ptr(v)]);
    args[4..9].copy_from_slice(&rows.args("adam_step_rows", d)?);
    args[9..19].copy_from_slice(&adam_scalars(hp));
    args[19] = Arg::Ptr(t);
    Ok(Plan::one(Launch::new(Kernel::AdamStepRows, grid(rows.cap * d), &args)))
}

// ---- Sampling and evaluation -------------------------------------------------------------

/// `c[0] += add` (wrapping), one block of 32 threads.
pub fn counter_add(c: Addr, add: u32) -> Plan {
    Plan::one(Launch::new(Kernel::CounterAdd, single(32), &[Arg::Ptr(c), Arg::U32(add)]))
}

/// The sampler's tables on the device: the training and known-items CSRs and their sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SampleBufs {
    pub train_off: Addr,
    pub train_items: Addr,
    pub known_off: Addr,
    pub known_items: Addr,
    pub n_users: usize,
    pub n_items: usize,
    pub n_neg: usize,
    /// Sample slots of an epoch (`SampleTables::rows`).
    pub rows: u64,
}

/// One batch of the epoch (`b ≤ batch` rows), from the sampler's `state` (5 u32: batch
/// number, key), then `state[0] += 1` on the device.
#[allow(clippy::too_many_arguments)]
pub fn sample_batch(
    t: &SampleBufs,
    state: Addr,
    batch: usize,
    b: usize,
    users: Addr,
    items: Addr,
    labels: Addr,
) -> Result<Plan> {
    const OP: &str = "sample_batch";
    let (ui, bi, ki) = (i32_of(OP, "users", t.n_users)?, i32_of(OP, "batch", batch)?, i32_of(OP, "b", b)?);
    let args = [
        Arg::Ptr(t.train_off),
        Arg::Ptr(t.train_items),
        Arg::Ptr(t.known_off),
        Arg::Ptr(t.known_items),
        Arg::I32(ui),
        Arg::U32(t.n_items as u32),
        Arg::U32(t.n_neg as u32),
        Arg::U64(t.rows),
        Arg::Ptr(state),
        Arg::I32(bi),
        Arg::I32(ki),
        Arg::Ptr(users),
        Arg::Ptr(items),
        Arg::Ptr(labels),
    ];
    Ok(Plan::one(Launch::new(Kernel::SampleBatch, grid(b), &args)).and(counter_add(state, 1)))
}

/// Sampled-protocol ranks (not launched by the backend yet): one warp per case, `rank[c]` =
/// how many of case `c`'s other candidates score at least its first.
pub fn rank_of_first(scores: Addr, off: Addr, cases: usize, rank: Addr) -> Result<Plan> {
    let ci = i32_of("rank_of_first", "cases", cases)?;
    let args = [Arg::Ptr(scores), Arg::Ptr(off), Arg::I32(ci), Arg::Ptr(rank)];
    Ok(Plan::one(Launch::new(Kernel::RankOfFirst, warps(cases), &args)))
}

/// The seen-items CSR of the evaluation kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seen {
    pub items: Addr,
    pub off: Addr,
}

/// Full-ranking ranks over all unseen items: one block per user.
pub fn full_rank(scores: Addr, u: usize, n: usize, targets: Addr, seen: Seen, ranks: Addr) -> Result<Plan> {
    if u == 0 {
        return Ok(Plan::empty());
    }
    let ni = i32_of("rank_unseen", "n", n)?;
    let args =
        [Arg::Ptr(scores), Arg::I32(ni), Arg::Ptr(targets), Arg::Ptr(seen.items), Arg::Ptr(seen.off), Arg::Ptr(ranks)];
    Ok(Plan::one(Launch::new(Kernel::FullRank, per_block(u), &args)))
}

/// The largest item count `top_k`'s shared-memory bitmap takes (40 KiB).
pub const TOP_K_MAX_MASK_BYTES: usize = 40 * 1024;

/// The `k` best unseen items per user: one block per user, a bitmap of the items in dynamic
/// shared memory.
pub fn top_k(scores: Addr, u: usize, n: usize, k: usize, seen: Seen, out: Addr) -> Result<Plan> {
    const OP: &str = "top_k";
    let mask_bytes = n.div_ceil(32) * 4;
    if mask_bytes > TOP_K_MAX_MASK_BYTES {
        return Err(Error::invalid(OP, "n", format!("{n} items exceed the kernel's 40 KiB shared-memory bitmap")));
    }
    if u == 0 || k == 0 {
        return Ok(Plan::empty());
    }
    let (ni, ki) = (i32_of(OP, "n", n)?, i32_of(OP, "k", k)?);
    let args = [Arg::Ptr(scores), Arg::I32(ni), Arg::I32(ki), Arg::Ptr(seen.items), Arg::Ptr(seen.off), Arg::Ptr(out)];
    Ok(Plan::one(Launch::new(Kernel::TopK, ((u as u32, 1, 1), (256, 1, 1), mask_bytes as u32), &args)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::{SOURCES, kernel_names};

    /// `gemm_tiled` takes a 100 M-row product (`prepare_scoring` over a 100 M-row table): its row
    /// tiles go on `grid.x`; only an output wider than 65,535 column tiles is refused.
    #[test]
    fn gemm_tiled_grid_holds_100m_rows() {
        let (m, n, k) = (100_000_000, 8, 32);
        let p = gemm("linear_forward", GpuGemm::Tiled, (1, 2, 3), (m, n, k), (false, true), (1.0, 0.0), Epilogue::None)
            .expect("a 100 M-row product has a plan");
        let l = p.launches().next().expect("one launch");
        assert_eq!((l.kernel, l.grid), (Kernel::GemmTiled, (1_562_500, 1, 1)));
        let wide = 65_536 * 16;
        let e =
            gemm("linear_forward", GpuGemm::Tiled, (1, 2, 3), (64, wide, k), (false, true), (1.0, 0.0), Epilogue::None)
                .unwrap_err()
                .to_string();
        assert!(e.contains("columns exceed gemm_tiled's grid"), "{e}");
    }

    /// Every `extern "C" __global__` kernel of kernels/*.cu has a variant naming it and its
    /// file, and every variant a kernel.
    #[test]
    fn every_kernel_has_a_variant() {
        let mut in_files = Vec::new();
        for &(file, src) in SOURCES {
            for name in kernel_names(src) {
                in_files.push((file, name));
            }
        }
        let variants: Vec<(&str, &str)> = Kernel::ALL.iter().map(|k| (k.file(), k.name())).collect();
        for f in &in_files {
            assert!(variants.contains(f), "kernel {}::{} has no `Kernel` variant", f.0, f.1);
        }
        for v in &variants {
            assert!(in_files.contains(v), "`Kernel` variant {}::{} is in no kernel file", v.0, v.1);
        }
        assert_eq!(in_files.len(), variants.len());
        for (i, k) in Kernel::ALL.iter().enumerate() {
            assert_eq!(*k as usize, i);
        }
    }

    /// Column-major GEMM as cuBLAS defines it, on host slices.
    fn sgemm_col_major(g: &Sgemm, a: &[f32], b: &[f32], c: &mut [f32]) {
        let (m, n, k) = (g.m as usize, g.n as usize, g.k as usize);
        let (lda, ldb, ldc) = (g.lda as usize, g.ldb as usize, g.ldc as usize);
        for j in 0..n {
            for i in 0..m {
                let mut s = 0.0f32;
                for p in 0..k {
                    let x = if g.trans_a { a[p + i * lda] } else { a[i + p * lda] };
                    let y = if g.trans_b { b[j + p * ldb] } else { b[p + j * ldb] };
                    s += x * y;
                }
                c[i + j * ldc] = g.alpha * s + if g.beta == 0.0 { 0.0 } else { g.beta * c[i + j * ldc] };
            }
        }
    }

    /// The row-major → cuBLAS mapping of [`gemm`], run through a column-major reference GEMM,
    /// gives the row-major product for all four transpose combinations.
    #[test]
    fn cublas_mapping_computes_the_row_major_product() {
        let (m, n, k) = (5usize, 3usize, 4usize);
        let av: Vec<f32> = (0..m * k).map(|x| x as f32 * 0.5 - 3.0).collect(); // A' (M,K)
        let bv: Vec<f32> = (0..k * n).map(|x| 1.0 - x as f32 * 0.25).collect(); // B' (K,N)
        let mut want = vec![0.0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                want[i * n + j] = (0..k).map(|p| av[i * k + p] * bv[p * n + j]).sum();
            }
        }
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            let a: Vec<f32> = if ta { (0..k * m).map(|e| av[(e % m) * k + e / m]).collect() } else { av.clone() };
            let b: Vec<f32> = if tb { (0..n * k).map(|e| bv[(e % k) * n + e / k]).collect() } else { bv.clone() };
            let plan = gemm("t", GpuGemm::Cublas, (1, 2, 3), (m, n, k), (ta, tb), (1.0, 0.0), Epilogue::None).unwrap();
            let [Step::Gemm(g)] = plan.steps() else { panic!("one sgemm: {plan:?}") };
            let bufs = |addr: Addr| if addr == 1 { &a } else { &b };
            let mut c = vec![f32::NAN; m * n];
            assert_eq!(g.c, 3);
            sgemm_col_major(g, bufs(g.a), bufs(g.b), &mut c);
            assert_eq!(c, want, "ta={ta} tb={tb}");
        }
    }

    #[test]
    fn plans_hold_what_they_were_given() {
        let p = embedding_forward(10, 20, 30, 300, 24).unwrap();
        let l = p.launch().unwrap();
        assert_eq!(l.kernel, Kernel::EmbeddingForward);
        assert_eq!(l.grid, (29, 1, 1));
        assert_eq!(l.args(), &[Arg::Ptr(10), Arg::Ptr(20), Arg::Ptr(30), Arg::I32(300), Arg::I32(24)]);
        assert!(
            gemm("t", GpuGemm::Tiled, (1, 2, 3), (0, 5, 5), (false, false), (1.0, 0.0), Epilogue::None)
                .unwrap()
                .steps()
                .is_empty()
        );
        let e = embedding_forward(1, 2, 3, 1 << 31, 1).unwrap_err();
        assert!(e.to_string().contains("32-bit"), "{e}");
    }
}
