//! `CudaBackend`: the [`Backend`] trait on an NVIDIA GPU, f32, one stream. Each op validates
//! its sizes on the host exactly as the CPU backend does (same typed errors), then launches the
//! kernel of the same name from `kernels/*.cu`.
//!
//! **Status: written and compiled, not yet run on a GPU** (no session so far was lent one). The
//! parity tests in `tests/parity.rs` compare every op with `CpuBackend<f32>` and print
//! `skipped: no CUDA device` here; `tests/emulated.rs` runs the kernels themselves on the CPU.
//!
//! ## No host round-trip per batch
//!
//! * Ids written from the host keep a host mirror, so range checks cost no device read. Ids
//!   the device writes itself ([`Backend::sample_batch`], [`Backend::unique_ids`]) have none:
//!   they are in range by construction, and their count, when it varies, stays on the device.
//! * The **row plan** of a batch's ids (its distinct rows, ascending, and each row's batch
//!   positions in batch order) is built on the device in four launches (`rows_count`,
//!   `rows_scan`, `rows_place`, `rows_sort` in `embedding.cu`), once per id buffer and batch,
//!   and cached with the ids: the deterministic scatter-add and the lazy optimizers read it.
//! * Adam's step count and the sampler's batch number are device counters
//!   ([`Backend::counter_add`]), so one training step can be recorded as a CUDA graph and
//!   replayed ([`Backend::capture`]).
use crate::device::probe;
use crate::error::CudaError;
use crate::kernels::{SOURCES, kernel_names, unit};
use cudarc::cublas::{CudaBlas, Gemm, GemmConfig, sys::cublasOperation_t};
use cudarc::driver::{CudaContext, CudaFunction, CudaGraph, CudaSlice, CudaStream, LaunchConfig, PushKernelArg, sys};
use ncf_core::error::{check_ids, check_len};
use ncf_core::sample::SampleTables;
use ncf_core::{AdamHp, Backend, Error, Result, SgdHp};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

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
/// dimension `C`. Kept separate so the mapping is tested on the CPU (`tests` below).
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

/// The order in which the deterministic scatter-add visits a batch: batch positions sorted by id
/// (stably, so equal ids keep batch order) and the start of each run of equal ids, closed by
/// `ids.len()`: the host reference of the row plan (`order`, `seg`) that the `rows_*` kernels
/// build on the device (`tests/emulated.rs` checks them against it).
pub fn sorted_runs(ids: &[u32]) -> (Vec<u32>, Vec<u32>) {
    let mut order: Vec<u32> = (0..ids.len() as u32).collect();
    order.sort_by_key(|&p| ids[p as usize]);
    let mut starts: Vec<u32> = Vec::with_capacity(ids.len() + 1);
    for (k, &p) in order.iter().enumerate() {
        if k == 0 || ids[p as usize] != ids[order[k - 1] as usize] {
            starts.push(k as u32);
        }
    }
    starts.push(ids.len() as u32);
    (order, starts)
}

/// Ids on the device.
pub struct DevIds {
    dev: CudaSlice<u32>,
    /// What the host last wrote (range checks read it), or `None` when the device wrote the
    /// ids (then they are in range by construction).
    host: Option<Vec<u32>>,
    /// How many leading ids are live, as far as the host knows: what `write_ids` wrote, or the
    /// capacity. A device-made list of rows keeps its own count in `count` instead.
    len: usize,
    /// The live count on the device (the output of `unique_ids`).
    count: Option<CudaSlice<u32>>,
    /// Bumped on every write, so a cached row plan knows when it is stale.
    generation: u64,
    plan: Mutex<Option<RowPlan>>,
}

impl DevIds {
    /// Capacity in ids.
    fn cap(&self) -> usize {
        self.dev.len()
    }

    /// Range check through the host mirror; device-made ids pass (valid by construction).
    fn check(&self, op: &'static str, table: &'static str, b: usize, n: usize) -> Result<()> {
        check_len(op, "ids", self.cap(), &[b])?;
        match &self.host {
            Some(h) => check_ids(op, table, &h[..b], n),
            None => Ok(()),
        }
    }

    fn written_by_device(&mut self, len: usize) {
        self.host = None;
        self.len = len;
        self.generation += 1;
    }
}

/// The row plan of one id buffer (see the module docs): buffers sized for `n` table rows and
/// `cap` batch positions, and what they were last computed for.
struct RowPlan {
    /// Per-row counts; all zero between plans.
    count: CudaSlice<u32>,
    fill: CudaSlice<u32>,
    order: CudaSlice<u32>,
    seg: CudaSlice<u32>,
    uniq: CudaSlice<u32>,
    nuniq: CudaSlice<u32>,
    /// `(ids generation, b, n)` of the plan the buffers hold.
    fresh: Option<(u64, usize, usize)>,
}

/// The GPU backend (f32).
pub struct CudaBackend {
    stream: Arc<CudaStream>,
    funcs: HashMap<&'static str, CudaFunction>,
    blas: CudaBlas,
    pub gemm: GpuGemm,
    /// Scatter-add in a fixed order (the row plan) instead of with atomics.
    pub deterministic: bool,
    /// Per-block loss partial sums (`LOSS_BLOCKS` floats) and the finished-block counter of the
    /// single-launch loss reduction.
    partials: Mutex<(CudaSlice<f32>, CudaSlice<u32>)>,
    pub device_name: String,
}

const BLOCK: u32 = 256;
const LOSS_BLOCKS: u32 = 64;

fn dev_err(op: &'static str) -> impl Fn(cudarc::driver::DriverError) -> Error {
    move |e| Error::Device { op, message: e.to_string() }
}

/// A launch covering `n` elements with a grid-stride kernel.
fn grid(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(BLOCK as usize).clamp(1, 65_535) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 }
}

/// One warp per row.
fn warps(rows: usize) -> LaunchConfig {
    let blocks = (rows * 32).div_ceil(BLOCK as usize).max(1) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 }
}

fn i32_of(op: &'static str, what: &'static str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::invalid(op, what, format!("{v} exceeds the GPU kernels' 32-bit sizes")))
}

/// Launches `$kernel` over `$cfg` with the listed arguments.
macro_rules! launch {
    ($self:ident, $op:expr, $kernel:expr, $cfg:expr, $($arg:expr),+ $(,)?) => {{
        let f = $self.f($kernel)?;
        let mut l = $self.stream.launch_builder(f);
        $( l.arg($arg); )+
        // SAFETY: each call site passes exactly the arguments of the kernel's signature in
        // kernels/*.cu, in order and with the same types, after checking buffer sizes.
        unsafe { l.launch($cfg) }.map(|_| ()).map_err(dev_err($op))
    }};
}

impl CudaBackend {
    /// Opens device `ordinal` (after [`probe`] checked every library), compiles every kernel
    /// file to CUBIN for the device's architecture (or takes it from the [`crate::cache`]) and
    /// loads the kernels.
    pub fn new(ordinal: usize, gemm: GpuGemm) -> std::result::Result<Self, CudaError> {
        let info = probe(ordinal)?;
        let call =
            |call: &'static str| move |e: cudarc::driver::DriverError| CudaError::Call { call, status: e.to_string() };
        let ctx = CudaContext::new(ordinal).map_err(call("cuCtxCreate"))?;
        // SAFETY: every buffer of this backend is used on its one stream only, so cudarc's
        // per-buffer events (which order work across streams, and would be recorded into a
        // captured graph) are not needed.
        unsafe { ctx.disable_event_tracking() };
        // A stream of our own: the legacy default stream cannot be captured into a graph.
        let stream = ctx.new_stream().map_err(call("cuStreamCreate"))?;
        let arch = (info.compute_capability.0 * 10 + info.compute_capability.1) as u32;
        let mut funcs = HashMap::new();
        let cache_dir = crate::cache::default_dir();
        for &(file, src) in SOURCES {
            let (cubin, _) = crate::cache::cubin(file, &unit(src), arch, cache_dir.as_deref())?;
            let module = ctx.load_module(cudarc::nvrtc::Ptx::from_binary(cubin)).map_err(call("cuModuleLoadData"))?;
            for name in kernel_names(src) {
                let f = module.load_function(name).map_err(call("cuModuleGetFunction"))?;
                funcs.insert(name, f);
            }
        }
        let blas = CudaBlas::new(stream.clone())
            .map_err(|e| CudaError::Call { call: "cublasCreate", status: e.to_string() })?;
        let partials = stream.alloc_zeros::<f32>(LOSS_BLOCKS as usize).map_err(call("cuMemAlloc"))?;
        let done = stream.alloc_zeros::<u32>(1).map_err(call("cuMemAlloc"))?;
        Ok(CudaBackend {
            stream,
            funcs,
            blas,
            gemm,
            deterministic: true,
            partials: Mutex::new((partials, done)),
            device_name: info.name,
        })
    }

    /// GPU time of the work `f` queues, in milliseconds, measured with CUDA events.
    pub fn time_ms(&self, mut f: impl FnMut() -> Result<()>) -> Result<f32> {
        let flags = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
        let start = self.stream.record_event(flags).map_err(dev_err("time_ms"))?;
        f()?;
        let end = self.stream.record_event(flags).map_err(dev_err("time_ms"))?;
        end.synchronize().map_err(dev_err("time_ms"))?;
        start.elapsed_ms(&end).map_err(dev_err("time_ms"))
    }

    fn f(&self, name: &'static str) -> Result<&CudaFunction> {
        self.funcs.get(name).ok_or_else(|| Error::invalid("cuda", "kernel", format!("kernel `{name}` was not loaded")))
    }

    /// `C (M,N) = alpha·op(A)·op(B) + beta·C`, row-major (see `kernels/linear.cu`), with the
    /// epilogue `C += bias` (per column) and `relu_out = max(C, 0)` when given. cuBLAS has no
    /// such epilogue here, so its path adds one `bias_relu_forward` pass for it.
    #[allow(clippy::too_many_arguments)]
    fn gemm_rm(
        &self,
        op: &'static str,
        a: &CudaSlice<f32>,
        b: &CudaSlice<f32>,
        c: &mut CudaSlice<f32>,
        (m, n, k): (usize, usize, usize),
        (ta, tb): (bool, bool),
        (alpha, beta): (f32, f32),
        epilogue: Option<(&CudaSlice<f32>, Option<&mut CudaSlice<f32>>)>,
    ) -> Result<()> {
        if m == 0 || n == 0 {
            return Ok(());
        }
        let (mi, ni, ki) = (i32_of(op, "m", m)?, i32_of(op, "n", n)?, i32_of(op, "k", k)?);
        match self.gemm {
            GpuGemm::Cublas => {
                let a_ = cublas_args(mi, ni, ki, ta, tb);
                let trans = |t: bool| if t { cublasOperation_t::CUBLAS_OP_T } else { cublasOperation_t::CUBLAS_OP_N };
                let cfg = GemmConfig {
                    transa: trans(a_.trans_first),
                    transb: trans(a_.trans_second),
                    m: a_.m,
                    n: a_.n,
                    k: a_.k,
                    alpha,
                    lda: a_.ld_first,
                    ldb: a_.ld_second,
                    beta,
                    ldc: a_.ldc,
                };
                // SAFETY: the buffers hold at least m·k, k·n and m·n elements (checked by the
                // callers with check_len), matching the leading dimensions above.
                unsafe { self.blas.gemm(cfg, b, a, c) }.map_err(|e| Error::Device { op, message: e.to_string() })?;
                match epilogue {
                    None => Ok(()),
                    Some((bias, relu)) => {
                        let null = 0u64;
                        match relu {
                            Some(x) => launch!(self, op, "bias_relu_forward", grid(m * n), &mut *c, bias, x, &mi, &ni),
                            None => launch!(self, op, "bias_relu_forward", grid(m * n), &mut *c, bias, &null, &mi, &ni),
                        }
                    }
                }
            }
            GpuGemm::Naive | GpuGemm::Tiled => {
                let (name, cfg) = if self.gemm == GpuGemm::Naive {
                    ("gemm_naive", grid(m * n))
                } else {
                    let g = LaunchConfig {
                        grid_dim: (n.div_ceil(16) as u32, m.div_ceil(64) as u32, 1),
                        block_dim: (256, 1, 1),
                        shared_mem_bytes: 0,
                    };
                    ("gemm_tiled", g)
                };
                let f = self.f(name)?;
                let (ta, tb) = (ta as i32, tb as i32);
                let null = 0u64;
                let mut l = self.stream.launch_builder(f);
                l.arg(a).arg(b).arg(&mut *c).arg(&mi).arg(&ni).arg(&ki).arg(&ta).arg(&tb).arg(&alpha).arg(&beta);
                match epilogue {
                    None => l.arg(&null).arg(&null),
                    Some((bias, None)) => l.arg(bias).arg(&null),
                    Some((bias, Some(x))) => l.arg(bias).arg(x),
                };
                // SAFETY: the argument list matches the kernel's signature in linear.cu (a null
                // pointer is passed as a 64-bit zero), and the buffers are large enough for the
                // shapes (checked by the callers).
                unsafe { l.launch(cfg) }.map(|_| ()).map_err(dev_err(op))
            }
        }
    }

    /// A mean loss over `b` rows (`bce_with_logits` or `mse`, same signature in loss.cu), in one
    /// launch: the kernel writes the gradient, and its last block adds `(1/b)·Σ partials` into
    /// `loss[0]` in a fixed order.
    fn mean_loss(
        &self,
        op: &'static str,
        x: &CudaSlice<f32>,
        y: &CudaSlice<f32>,
        b: usize,
        loss: &mut CudaSlice<f32>,
        dx: &mut CudaSlice<f32>,
    ) -> Result<()> {
        for (t, l) in [("x", x.len()), ("y", y.len()), ("dx", dx.len())] {
            check_len(op, t, l, &[b])?;
        }
        check_len(op, "loss", loss.len(), &[1])?;
        if b == 0 {
            return Err(Error::invalid(op, "b", "a mean over an empty batch"));
        }
        let bi = i32_of(op, "b", b)?;
        let mut guard = self.partials.lock().map_err(|_| Error::invalid(op, "partials", "lock poisoned"))?;
        let (partials, done) = &mut *guard;
        let blocks = (b.div_ceil(BLOCK as usize) as u32).clamp(1, LOSS_BLOCKS);
        let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 };
        launch!(self, op, op, cfg, x, y, dx, partials, done, loss, &bi)
    }

    /// The row plan of `ids[..b]` over a table of `n` rows, computed on the device unless the
    /// cached one is current. Returned locked; its buffers are valid until the ids change.
    fn plan<'a>(
        &self,
        op: &'static str,
        ids: &'a DevIds,
        b: usize,
        n: usize,
    ) -> Result<MutexGuard<'a, Option<RowPlan>>> {
        let mut guard = ids.plan.lock().map_err(|_| Error::invalid(op, "plan", "lock poisoned"))?;
        let cap = ids.cap();
        let fits = guard.as_ref().is_some_and(|p| p.count.len() >= n && p.order.len() >= cap);
        if !fits {
            // Allocated once per id buffer (outside any graph capture: the first, eager step).
            let z = |len: usize| self.stream.alloc_zeros::<u32>(len.max(1)).map_err(dev_err(op));
            *guard = Some(RowPlan {
                count: z(n)?,
                fill: z(n)?,
                order: z(cap)?,
                seg: z(cap + 1)?,
                uniq: z(cap)?,
                nuniq: z(1)?,
                fresh: None,
            });
        }
        let Some(plan) = guard.as_mut() else { unreachable!("allocated above") };
        if plan.fresh != Some((ids.generation, b, n)) {
            let (bi, ni, ci) = (i32_of(op, "b", b)?, i32_of(op, "n", n)?, i32_of(op, "cap", cap)?);
            launch!(self, op, "rows_count", grid(b), &ids.dev, &bi, &mut plan.count)?;
            let one = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (1024, 1, 1), shared_mem_bytes: 0 };
            launch!(
                self,
                op,
                "rows_scan",
                one,
                &mut plan.count,
                &ni,
                &mut plan.fill,
                &mut plan.uniq,
                &mut plan.seg,
                &mut plan.nuniq
            )?;
            launch!(self, op, "rows_place", grid(b), &ids.dev, &bi, &mut plan.fill, &mut plan.order)?;
            launch!(self, op, "rows_sort", grid(cap), &mut plan.order, &plan.seg, &plan.nuniq, &ci)?;
            plan.fresh = Some((ids.generation, b, n));
        }
        Ok(guard)
    }

    /// The dense layer's two backward GEMMs: `dinp (B,I) = dout (B,O) · w (O,I)` (when asked)
    /// and `dw (O,I) += doutᵀ (O,B) · inp (B,I)`.
    #[allow(clippy::too_many_arguments)]
    fn dense_backward_gemms(
        &self,
        op: &'static str,
        dout: &CudaSlice<f32>,
        inp: &CudaSlice<f32>,
        w: &CudaSlice<f32>,
        dinp: Option<&mut CudaSlice<f32>>,
        dw: &mut CudaSlice<f32>,
        (b, i, o): (usize, usize, usize),
    ) -> Result<()> {
        if let Some(dinp) = dinp {
            check_len(op, "dinp", dinp.len(), &[b, i])?;
            self.gemm_rm(op, dout, w, dinp, (b, i, o), (false, false), (1.0, 0.0), None)?;
        }
        self.gemm_rm(op, dout, inp, dw, (o, i, b), (true, false), (1.0, 1.0), None)
    }
}

/// A lazy optimizer's row list as its kernels take it: `rows`, `nrows_host`, and `nrows_dev`
/// (the device count of a `unique_ids` output, or a null pointer for a host-written list).
struct LiveRows<'a> {
    list: &'a CudaSlice<u32>,
    nrows_host: i32,
    nrows_dev: Option<&'a CudaSlice<u32>>,
    null: u64,
}

impl<'a> LiveRows<'a> {
    fn of(rows: &'a DevIds) -> Self {
        LiveRows {
            list: &rows.dev,
            nrows_host: rows.len.min(i32::MAX as usize) as i32,
            nrows_dev: rows.count.as_ref(),
            null: 0,
        }
    }

    fn push<'b>(&'b self, l: &mut cudarc::driver::LaunchArgs<'b>) {
        l.arg(self.list).arg(&self.nrows_host);
        match self.nrows_dev {
            Some(c) => l.arg(c),
            None => l.arg(&self.null),
        };
    }
}

impl Backend for CudaBackend {
    type T = f32;
    type Buf = CudaSlice<f32>;
    type Ids = DevIds;

    fn name(&self) -> String {
        format!("cuda ({})", self.device_name)
    }

    fn zeros(&self, len: usize) -> Result<Self::Buf> {
        self.stream.alloc_zeros::<f32>(len.max(1)).map_err(dev_err("zeros"))
    }
    fn upload(&self, host: &[f32]) -> Result<Self::Buf> {
        if host.is_empty() {
            return self.zeros(1);
        }
        self.stream.clone_htod(host).map_err(dev_err("upload"))
    }
    fn write(&self, dst: &mut Self::Buf, src: &[f32]) -> Result<()> {
        check_len("write", "dst", dst.len(), &[src.len()])?;
        if src.is_empty() {
            return Ok(());
        }
        let mut view = dst.slice_mut(..src.len());
        self.stream.memcpy_htod(src, &mut view).map_err(dev_err("write"))
    }
    fn download(&self, buf: &Self::Buf) -> Result<Vec<f32>> {
        self.stream.clone_dtoh(buf).map_err(dev_err("download"))
    }
    fn len(&self, buf: &Self::Buf) -> usize {
        buf.len()
    }
    fn fill(&self, buf: &mut Self::Buf, n: usize, value: f32) -> Result<()> {
        check_len("fill", "buf", buf.len(), &[n])?;
        let nn = n as i64;
        launch!(self, "fill", "fill", grid(n), buf, &value, &nn)
    }
    fn zeros_ids(&self, len: usize) -> Result<Self::Ids> {
        let dev = self.stream.alloc_zeros::<u32>(len.max(1)).map_err(dev_err("zeros_ids"))?;
        Ok(DevIds { dev, host: Some(vec![0; len.max(1)]), len, count: None, generation: 0, plan: Mutex::new(None) })
    }
    fn write_ids(&self, dst: &mut Self::Ids, src: &[u32]) -> Result<()> {
        check_len("write_ids", "dst", dst.cap(), &[src.len()])?;
        let cap = dst.cap();
        let host = dst.host.get_or_insert_with(|| vec![0; cap]);
        host[..src.len()].copy_from_slice(src);
        dst.len = src.len();
        dst.count = None;
        dst.generation += 1;
        if src.is_empty() {
            return Ok(());
        }
        let mut view = dst.dev.slice_mut(..src.len());
        self.stream.memcpy_htod(src, &mut view).map_err(dev_err("write_ids"))
    }
    fn download_ids(&self, ids: &Self::Ids, n: usize) -> Result<Vec<u32>> {
        check_len("download_ids", "ids", ids.cap(), &[n])?;
        match &ids.host {
            Some(h) => Ok(h[..n].to_vec()),
            None => {
                let mut all = self.stream.clone_dtoh(&ids.dev).map_err(dev_err("download_ids"))?;
                all.truncate(n);
                Ok(all)
            }
        }
    }
    fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(dev_err("synchronize"))
    }

    fn embedding_forward(
        &self,
        table: &Self::Buf,
        n: usize,
        d: usize,
        ids: &Self::Ids,
        b: usize,
        out: &mut Self::Buf,
    ) -> Result<()> {
        const OP: &str = "embedding_forward";
        check_len(OP, "table", table.len(), &[n, d])?;
        check_len(OP, "out", out.len(), &[b, d])?;
        ids.check(OP, "table", b, n)?;
        let (bi, di) = (i32_of(OP, "b", b)?, i32_of(OP, "d", d)?);
        launch!(self, OP, "embedding_forward", grid(b * d), table, &ids.dev, out, &bi, &di)
    }

    fn gather_add_relu(
        &self,
        a: &Self::Buf,
        na: usize,
        ia: &Self::Ids,
        c: &Self::Buf,
        nc: usize,
        ic: &Self::Ids,
        d: usize,
        b: usize,
        out: &mut Self::Buf,
    ) -> Result<()> {
        const OP: &str = "gather_add_relu";
        check_len(OP, "a", a.len(), &[na, d])?;
        check_len(OP, "c", c.len(), &[nc, d])?;
        check_len(OP, "out", out.len(), &[b, d])?;
        ia.check(OP, "a", b, na)?;
        ic.check(OP, "c", b, nc)?;
        let (bi, di) = (i32_of(OP, "b", b)?, i32_of(OP, "d", d)?);
        launch!(self, OP, "gather_add_relu", grid(b * d), a, &ia.dev, c, &ic.dev, out, &bi, &di)
    }

    fn embedding_backward(
        &self,
        dout: &Self::Buf,
        ids: &Self::Ids,
        b: usize,
        d: usize,
        dtable: &mut Self::Buf,
        n: usize,
    ) -> Result<()> {
        const OP: &str = "embedding_backward";
        check_len(OP, "dout", dout.len(), &[b, d])?;
        check_len(OP, "dtable", dtable.len(), &[n, d])?;
        ids.check(OP, "dtable", b, n)?;
        if b == 0 || d == 0 {
            return Ok(());
        }
        let (bi, di) = (i32_of(OP, "b", b)?, i32_of(OP, "d", d)?);
        if !self.deterministic {
            return launch!(self, OP, "embedding_backward_atomic", grid(b * d), dout, &ids.dev, dtable, &bi, &di);
        }
        // Each distinct row sums its batch positions in batch order (the row plan).
        let guard = self.plan(OP, ids, b, n)?;
        let Some(plan) = guard.as_ref() else { unreachable!("plan() returns a computed plan") };
        let ci = i32_of(OP, "cap", b)?;
        launch!(
            self,
            OP,
            "embedding_backward_sorted",
            grid(b * d),
            dout,
            &plan.order,
            &plan.seg,
            &plan.uniq,
            &plan.nuniq,
            dtable,
            &ci,
            &di
        )
    }

    fn linear_forward(
        &self,
        inp: &Self::Buf,
        w: &Self::Buf,
        bias: &Self::Buf,
        out: &mut Self::Buf,
        b: usize,
        i: usize,
        o: usize,
    ) -> Result<()> {
        const OP: &str = "linear_forward";
        check_len(OP, "inp", inp.len(), &[b, i])?;
        check_len(OP, "w", w.len(), &[o, i])?;
        check_len(OP, "bias", bias.len(), &[o])?;
        check_len(OP, "out", out.len(), &[b, o])?;
        let (bi, ii, oi) = (i32_of(OP, "b", b)?, i32_of(OP, "i", i)?, i32_of(OP, "o", o)?);
        if o == 1 && self.gemm != GpuGemm::Naive {
            return launch!(self, OP, "matvec_bias", warps(b), inp, w, bias, out, &bi, &ii);
        }
        if self.gemm == GpuGemm::Cublas {
            launch!(self, OP, "bias_broadcast", grid(b * o), bias, &mut *out, &bi, &oi)?;
            return self.gemm_rm(OP, inp, w, out, (b, o, i), (false, true), (1.0, 1.0), None);
        }
        // out = inp·wᵀ, plus the bias in the GEMM's epilogue: one launch.
        self.gemm_rm(OP, inp, w, out, (b, o, i), (false, true), (1.0, 0.0), Some((bias, None)))
    }

    fn linear_relu_forward(
        &self,
        inp: &Self::Buf,
        w: &Self::Buf,
        bias: &Self::Buf,
        z: &mut Self::Buf,
        x: &mut Self::Buf,
        b: usize,
        i: usize,
        o: usize,
    ) -> Result<()> {
        const OP: &str = "linear_relu_forward";
        check_len(OP, "inp", inp.len(), &[b, i])?;
        check_len(OP, "w", w.len(), &[o, i])?;
        check_len(OP, "bias", bias.len(), &[o])?;
        check_len(OP, "z", z.len(), &[b, o])?;
        check_len(OP, "x", x.len(), &[b, o])?;
        // z = inp·wᵀ + bias and x = relu(z) in the GEMM's epilogue (cuBLAS: sgemm, then one
        // bias_relu_forward pass).
        self.gemm_rm(OP, inp, w, z, (b, o, i), (false, true), (1.0, 0.0), Some((bias, Some(x))))
    }

    fn linear_backward(
        &self,
        dout: &Self::Buf,
        inp: &Self::Buf,
        w: &Self::Buf,
        dinp: Option<&mut Self::Buf>,
        dw: &mut Self::Buf,
        dbias: &mut Self::Buf,
        b: usize,
        i: usize,
        o: usize,
    ) -> Result<()> {
        const OP: &str = "linear_backward";
        check_len(OP, "dout", dout.len(), &[b, o])?;
        check_len(OP, "inp", inp.len(), &[b, i])?;
        check_len(OP, "w", w.len(), &[o, i])?;
        check_len(OP, "dw", dw.len(), &[o, i])?;
        check_len(OP, "dbias", dbias.len(), &[o])?;
        self.dense_backward_gemms(OP, dout, inp, w, dinp, dw, (b, i, o))?;
        let (bi, oi) = (i32_of(OP, "b", b)?, i32_of(OP, "o", o)?);
        let cfg = LaunchConfig { grid_dim: (o.max(1) as u32, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 };
        launch!(self, OP, "bias_grad", cfg, dout, dbias, &bi, &oi)
    }

    fn linear_relu_backward(
        &self,
        x: &Self::Buf,
        dx: &Self::Buf,
        dz: &mut Self::Buf,
        inp: &Self::Buf,
        w: &Self::Buf,
        dinp: Option<&mut Self::Buf>,
        dw: &mut Self::Buf,
        dbias: &mut Self::Buf,
        b: usize,
        i: usize,
        o: usize,
    ) -> Result<()> {
        const OP: &str = "linear_relu_backward";
        for (t, l) in [("x", x.len()), ("dx", dx.len()), ("dz", dz.len())] {
            check_len(OP, t, l, &[b, o])?;
        }
        check_len(OP, "inp", inp.len(), &[b, i])?;
        check_len(OP, "w", w.len(), &[o, i])?;
        check_len(OP, "dw", dw.len(), &[o, i])?;
        check_len(OP, "dbias", dbias.len(), &[o])?;
        let (bi, oi) = (i32_of(OP, "b", b)?, i32_of(OP, "o", o)?);
        // dz and dbias in one pass (one block per output column), then the two GEMMs.
        let cfg = LaunchConfig { grid_dim: (o.max(1) as u32, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 };
        launch!(self, OP, "relu_bias_backward", cfg, x, dx, &mut *dz, &mut *dbias, &bi, &oi)?;
        self.dense_backward_gemms(OP, dz, inp, w, dinp, dw, (b, i, o))
    }

    fn relu_forward(&self, inp: &Self::Buf, out: &mut Self::Buf, n: usize) -> Result<()> {
        check_len("relu_forward", "inp", inp.len(), &[n])?;
        check_len("relu_forward", "out", out.len(), &[n])?;
        let nn = n as i64;
        launch!(self, "relu_forward", "relu_forward", grid(n), inp, out, &nn)
    }
    fn relu_backward(&self, out: &Self::Buf, dout: &Self::Buf, dinp: &mut Self::Buf, n: usize) -> Result<()> {
        for (t, l) in [("out", out.len()), ("dout", dout.len()), ("dinp", dinp.len())] {
            check_len("relu_backward", t, l, &[n])?;
        }
        let nn = n as i64;
        launch!(self, "relu_backward", "relu_backward", grid(n), out, dout, dinp, &nn)
    }
    fn sigmoid_forward(&self, inp: &Self::Buf, out: &mut Self::Buf, n: usize) -> Result<()> {
        check_len("sigmoid_forward", "inp", inp.len(), &[n])?;
        check_len("sigmoid_forward", "out", out.len(), &[n])?;
        let nn = n as i64;
        launch!(self, "sigmoid_forward", "sigmoid_forward", grid(n), inp, out, &nn)
    }

    fn bce_with_logits(
        &self,
        logits: &Self::Buf,
        labels: &Self::Buf,
        b: usize,
        loss: &mut Self::Buf,
        dlogits: &mut Self::Buf,
    ) -> Result<()> {
        self.mean_loss("bce_with_logits", logits, labels, b, loss, dlogits)
    }

    fn mse(
        &self,
        pred: &Self::Buf,
        target: &Self::Buf,
        b: usize,
        loss: &mut Self::Buf,
        dpred: &mut Self::Buf,
    ) -> Result<()> {
        self.mean_loss("mse", pred, target, b, loss, dpred)
    }

    fn gmf_forward(&self, u: &Self::Buf, v: &Self::Buf, out: &mut Self::Buf, n: usize) -> Result<()> {
        for (t, l) in [("u", u.len()), ("v", v.len()), ("out", out.len())] {
            check_len("gmf_forward", t, l, &[n])?;
        }
        let nn = n as i64;
        launch!(self, "gmf_forward", "gmf_forward", grid(n), u, v, out, &nn)
    }
    fn gmf_backward(
        &self,
        dout: &Self::Buf,
        u: &Self::Buf,
        v: &Self::Buf,
        du: &mut Self::Buf,
        dv: &mut Self::Buf,
        n: usize,
    ) -> Result<()> {
        for (t, l) in [("dout", dout.len()), ("u", u.len()), ("v", v.len()), ("du", du.len()), ("dv", dv.len())] {
            check_len("gmf_backward", t, l, &[n])?;
        }
        let nn = n as i64;
        launch!(self, "gmf_backward", "gmf_backward", grid(n), dout, u, v, du, dv, &nn)
    }
    fn concat_cols(
        &self,
        a: &Self::Buf,
        da: usize,
        c: &Self::Buf,
        dc: usize,
        b: usize,
        out: &mut Self::Buf,
    ) -> Result<()> {
        const OP: &str = "concat_cols";
        check_len(OP, "a", a.len(), &[b, da])?;
        check_len(OP, "c", c.len(), &[b, dc])?;
        check_len(OP, "out", out.len(), &[b, da + dc])?;
        let (dai, dci, bi) = (i32_of(OP, "da", da)?, i32_of(OP, "dc", dc)?, i32_of(OP, "b", b)?);
        launch!(self, OP, "concat_cols", grid(b * (da + dc)), a, &dai, c, &dci, out, &bi)
    }
    fn split_cols(
        &self,
        dout: &Self::Buf,
        da: usize,
        dc: usize,
        b: usize,
        grad_a: &mut Self::Buf,
        grad_c: &mut Self::Buf,
    ) -> Result<()> {
        const OP: &str = "split_cols";
        check_len(OP, "dout", dout.len(), &[b, da + dc])?;
        check_len(OP, "grad_a", grad_a.len(), &[b, da])?;
        check_len(OP, "grad_c", grad_c.len(), &[b, dc])?;
        let (dai, dci, bi) = (i32_of(OP, "da", da)?, i32_of(OP, "dc", dc)?, i32_of(OP, "b", b)?);
        launch!(self, OP, "split_cols", grid(b * (da + dc)), dout, &dai, &dci, grad_a, grad_c, &bi)
    }
    fn rowdot_forward(&self, u: &Self::Buf, v: &Self::Buf, b: usize, d: usize, out: &mut Self::Buf) -> Result<()> {
        const OP: &str = "rowdot_forward";
        check_len(OP, "u", u.len(), &[b, d])?;
        check_len(OP, "v", v.len(), &[b, d])?;
        check_len(OP, "out", out.len(), &[b])?;
        let (bi, di) = (i32_of(OP, "b", b)?, i32_of(OP, "d", d)?);
        launch!(self, OP, "rowdot_forward", warps(b), u, v, out, &bi, &di)
    }
    fn rowdot_backward(
        &self,
        dout: &Self::Buf,
        u: &Self::Buf,
        v: &Self::Buf,
        b: usize,
        d: usize,
        du: &mut Self::Buf,
        dv: &mut Self::Buf,
    ) -> Result<()> {
        const OP: &str = "rowdot_backward";
        check_len(OP, "dout", dout.len(), &[b])?;
        for (t, l) in [("u", u.len()), ("v", v.len()), ("du", du.len()), ("dv", dv.len())] {
            check_len(OP, t, l, &[b, d])?;
        }
        let (bi, di) = (i32_of(OP, "b", b)?, i32_of(OP, "d", d)?);
        launch!(self, OP, "rowdot_backward", grid(b * d), dout, u, v, du, dv, &bi, &di)
    }
    fn add_assign(&self, out: &mut Self::Buf, x: &Self::Buf, n: usize) -> Result<()> {
        check_len("add_assign", "out", out.len(), &[n])?;
        check_len("add_assign", "x", x.len(), &[n])?;
        let nn = n as i64;
        launch!(self, "add_assign", "add_assign", grid(n), out, x, &nn)
    }
    fn add_scalar(&self, out: &mut Self::Buf, s: &Self::Buf, n: usize) -> Result<()> {
        check_len("add_scalar", "out", out.len(), &[n])?;
        check_len("add_scalar", "s", s.len(), &[1])?;
        let nn = n as i64;
        launch!(self, "add_scalar", "add_scalar", grid(n), out, s, &nn)
    }
    fn sum_into(&self, x: &Self::Buf, n: usize, acc: &mut Self::Buf) -> Result<()> {
        check_len("sum_into", "x", x.len(), &[n])?;
        check_len("sum_into", "acc", acc.len(), &[1])?;
        let nn = n as i64;
        let cfg = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (1024, 1, 1), shared_mem_bytes: 0 };
        launch!(self, "sum_into", "sum_into", cfg, x, &nn, acc)
    }

    fn sgd_step(&self, p: &mut Self::Buf, g: &mut Self::Buf, mom: &mut Self::Buf, n: usize, hp: &SgdHp) -> Result<()> {
        for (t, l) in [("p", p.len()), ("g", g.len()), ("mom", mom.len())] {
            check_len("sgd_step", t, l, &[n])?;
        }
        let s = SgdScalars::new(hp);
        let nn = n as i64;
        launch!(self, "sgd_step", "sgd_step", grid(n), p, g, mom, &nn, &s.lr, &s.mu, &s.l2, &s.shrink)
    }
    fn adam_step(
        &self,
        p: &mut Self::Buf,
        g: &mut Self::Buf,
        m: &mut Self::Buf,
        v: &mut Self::Buf,
        n: usize,
        hp: &AdamHp,
        t: &Self::Ids,
    ) -> Result<()> {
        for (name, l) in [("p", p.len()), ("g", g.len()), ("m", m.len()), ("v", v.len())] {
            check_len("adam_step", name, l, &[n])?;
        }
        check_step("adam_step", t)?;
        let s = AdamScalars::new(hp);
        let nn = n as i64;
        launch!(
            self,
            "adam_step",
            "adam_step",
            grid(n),
            p,
            g,
            m,
            v,
            &nn,
            &s.b1,
            &s.omb1,
            &s.b2,
            &s.omb2,
            &s.lr,
            &s.beta1,
            &s.beta2,
            &s.eps,
            &s.l2,
            &s.shrink,
            &t.dev
        )
    }
    fn sgd_step_rows(
        &self,
        p: &mut Self::Buf,
        g: &mut Self::Buf,
        mom: &mut Self::Buf,
        rows: &Self::Ids,
        d: usize,
        n: usize,
        hp: &SgdHp,
    ) -> Result<()> {
        const OP: &str = "sgd_step_rows";
        for (t, l) in [("p", p.len()), ("g", g.len()), ("mom", mom.len())] {
            check_len(OP, t, l, &[n, d])?;
        }
        rows.check(OP, "p", rows.len.min(rows.cap()), n)?;
        let s = SgdScalars::new(hp);
        let (ci, di) = (i32_of(OP, "cap", rows.cap())?, i32_of(OP, "d", d)?);
        let live = LiveRows::of(rows);
        let mut l = self.stream.launch_builder(self.f(OP)?);
        l.arg(p).arg(g).arg(mom);
        live.push(&mut l);
        l.arg(&ci).arg(&di).arg(&s.lr).arg(&s.mu).arg(&s.l2).arg(&s.shrink);
        // SAFETY: matches `sgd_step_rows` in optim.cu (rows, nrows_host, nrows_dev, cap, d, …);
        // the row list holds cap ids < n (checked above, or made by unique_ids).
        unsafe { l.launch(grid(rows.cap() * d)) }.map(|_| ()).map_err(dev_err(OP))
    }
    fn adam_step_rows(
        &self,
        p: &mut Self::Buf,
        g: &mut Self::Buf,
        m: &mut Self::Buf,
        v: &mut Self::Buf,
        rows: &Self::Ids,
        d: usize,
        n: usize,
        hp: &AdamHp,
        t: &Self::Ids,
    ) -> Result<()> {
        const OP: &str = "adam_step_rows";
        for (name, l) in [("p", p.len()), ("g", g.len()), ("m", m.len()), ("v", v.len())] {
            check_len(OP, name, l, &[n, d])?;
        }
        rows.check(OP, "p", rows.len.min(rows.cap()), n)?;
        check_step(OP, t)?;
        let s = AdamScalars::new(hp);
        let (ci, di) = (i32_of(OP, "cap", rows.cap())?, i32_of(OP, "d", d)?);
        let live = LiveRows::of(rows);
        let mut l = self.stream.launch_builder(self.f(OP)?);
        l.arg(p).arg(g).arg(m).arg(v);
        live.push(&mut l);
        l.arg(&ci).arg(&di).arg(&s.b1).arg(&s.omb1).arg(&s.b2).arg(&s.omb2).arg(&s.lr).arg(&s.beta1).arg(&s.beta2);
        l.arg(&s.eps).arg(&s.l2).arg(&s.shrink).arg(&t.dev);
        // SAFETY: matches `adam_step_rows` in optim.cu; the row list holds cap ids < n, and t
        // is one u32 (checked above).
        unsafe { l.launch(grid(rows.cap() * d)) }.map(|_| ()).map_err(dev_err(OP))
    }
    fn unique_ids(&self, ids: &Self::Ids, b: usize, n: usize, out: &mut Self::Ids) -> Result<()> {
        const OP: &str = "unique_ids";
        check_len(OP, "out", out.cap(), &[b])?;
        ids.check(OP, "table", b, n)?;
        if b == 0 {
            out.written_by_device(0);
            out.count = None;
            return Ok(());
        }
        let guard = self.plan(OP, ids, b, n)?;
        let Some(plan) = guard.as_ref() else { unreachable!("plan() returns a computed plan") };
        // The distinct rows and their count, copied device to device (capacity b: at most b).
        let src = plan.uniq.slice(..b);
        let mut dst = out.dev.slice_mut(..b);
        self.stream.memcpy_dtod(&src, &mut dst).map_err(dev_err(OP))?;
        if out.count.is_none() {
            out.count = Some(self.stream.alloc_zeros::<u32>(1).map_err(dev_err(OP))?);
        }
        let Some(count) = out.count.as_mut() else { unreachable!("set above") };
        self.stream.memcpy_dtod(&plan.nuniq, count).map_err(dev_err(OP))?;
        out.written_by_device(b);
        Ok(())
    }
    fn counter_add(&self, c: &mut Self::Ids, add: u32) -> Result<()> {
        check_len("counter_add", "c", c.cap(), &[1])?;
        let one = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (32, 1, 1), shared_mem_bytes: 0 };
        launch!(self, "counter_add", "counter_add", one, &mut c.dev, &add)?;
        // The device now owns the value; a host mirror would be stale.
        c.host = None;
        c.generation += 1;
        Ok(())
    }

    fn sample_batch(
        &self,
        tables: &SampleTables<Self>,
        state: &mut Self::Ids,
        batch: usize,
        b: usize,
        users: &mut Self::Ids,
        items: &mut Self::Ids,
        labels: &mut Self::Buf,
    ) -> Result<()> {
        const OP: &str = "sample_batch";
        check_len(OP, "state", state.cap(), &[5])?;
        check_len(OP, "users", users.cap(), &[b])?;
        check_len(OP, "items", items.cap(), &[b])?;
        check_len(OP, "labels", labels.len(), &[b])?;
        if b > batch || tables.positives == 0 {
            return Err(Error::invalid(
                OP,
                "b",
                format!("{b} rows from batches of {batch} over {} positives", tables.positives),
            ));
        }
        let (ui, bi, ki) = (i32_of(OP, "users", tables.n_users)?, i32_of(OP, "batch", batch)?, i32_of(OP, "b", b)?);
        let (n_items, n_neg, rows) = (tables.n_items as u32, tables.n_neg as u32, tables.rows());
        launch!(
            self,
            OP,
            OP,
            grid(b),
            &tables.train_off.dev,
            &tables.train_items.dev,
            &tables.known_off.dev,
            &tables.known_items.dev,
            &ui,
            &n_items,
            &n_neg,
            &rows,
            &state.dev,
            &bi,
            &ki,
            &mut users.dev,
            &mut items.dev,
            labels
        )?;
        users.written_by_device(b);
        items.written_by_device(b);
        self.counter_add(state, 1)
    }

    fn rank_unseen(
        &self,
        scores: &Self::Buf,
        u: usize,
        n: usize,
        targets: &Self::Ids,
        seen_off: &Self::Ids,
        seen: &Self::Ids,
        ranks: &mut Self::Ids,
    ) -> Result<()> {
        const OP: &str = "rank_unseen";
        check_len(OP, "scores", scores.len(), &[u, n])?;
        check_len(OP, "ranks", ranks.cap(), &[u])?;
        targets.check(OP, "scores", u, n)?;
        let seen_len = seen_csr_len(OP, seen_off, u)?;
        seen.check(OP, "scores", seen_len, n)?;
        if u == 0 {
            return Ok(());
        }
        let ni = i32_of(OP, "n", n)?;
        let cfg = LaunchConfig { grid_dim: (u as u32, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 };
        launch!(self, OP, "full_rank", cfg, scores, &ni, &targets.dev, &seen.dev, &seen_off.dev, &mut ranks.dev)?;
        ranks.written_by_device(u);
        Ok(())
    }

    fn top_k(
        &self,
        scores: &Self::Buf,
        u: usize,
        n: usize,
        k: usize,
        seen_off: &Self::Ids,
        seen: &Self::Ids,
        out: &mut Self::Ids,
    ) -> Result<()> {
        const OP: &str = "top_k";
        check_len(OP, "scores", scores.len(), &[u, n])?;
        check_len(OP, "out", out.cap(), &[u, k])?;
        let seen_len = seen_csr_len(OP, seen_off, u)?;
        seen.check(OP, "scores", seen_len, n)?;
        let mask_bytes = n.div_ceil(32) * 4;
        if mask_bytes > 40 * 1024 {
            return Err(Error::invalid(OP, "n", format!("{n} items exceed the kernel's 40 KiB shared-memory bitmap")));
        }
        if u == 0 || k == 0 {
            return Ok(());
        }
        let (ni, ki) = (i32_of(OP, "n", n)?, i32_of(OP, "k", k)?);
        let cfg =
            LaunchConfig { grid_dim: (u as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: mask_bytes as u32 };
        launch!(self, OP, "top_k", cfg, scores, &ni, &ki, &seen.dev, &seen_off.dev, &mut out.dev)?;
        out.written_by_device(u * k);
        Ok(())
    }

    type Graph = CudaGraph;

    fn capture(&self, f: &mut dyn FnMut() -> Result<()>) -> Result<Option<CudaGraph>> {
        let err = |op: &'static str| move |e: cudarc::driver::DriverError| Error::Device { op, message: e.to_string() };
        self.stream
            .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(err("cuStreamBeginCapture"))?;
        let recorded = f();
        // End the capture whatever happened, so the stream is usable again.
        let graph = self.stream.end_capture(sys::CUgraphInstantiate_flags(0)).map_err(err("cuStreamEndCapture"));
        recorded?;
        let graph = graph?.ok_or_else(|| Error::invalid("capture", "graph", "the capture recorded nothing"))?;
        graph.upload().map_err(err("cuGraphUpload"))?;
        Ok(Some(graph))
    }

    fn replay(&self, graph: &CudaGraph) -> Result<()> {
        graph.launch().map_err(dev_err("cuGraphLaunch"))
    }
}

/// Entries of a seen-items CSR over `u` users, read from its host-written offsets (the kernels
/// index it unchecked, so the offsets must be known).
fn seen_csr_len(op: &'static str, off: &DevIds, u: usize) -> Result<usize> {
    check_len(op, "seen_off", off.cap(), &[u + 1])?;
    let Some(h) = &off.host else {
        return Err(Error::invalid(op, "seen_off", "offsets must be written from the host"));
    };
    if h[..=u].windows(2).any(|w| w[0] > w[1]) {
        return Err(Error::invalid(op, "seen_off", "offsets must not decrease"));
    }
    Ok(h[u] as usize)
}

/// A step counter buffer: one id, written by the host or advanced on the device.
fn check_step(op: &'static str, t: &DevIds) -> Result<()> {
    check_len(op, "t", t.cap(), &[1])?;
    match &t.host {
        Some(h) if h[0] == 0 => Err(Error::invalid(op, "t", "Adam steps count from 1")),
        _ => Ok(()),
    }
}

/// SGD's scalars in f32, from the f64 hyperparameters (as `ops/optim.rs` on the CPU).
struct SgdScalars {
    lr: f32,
    mu: f32,
    l2: f32,
    shrink: f32,
}

impl SgdScalars {
    fn new(hp: &SgdHp) -> Self {
        SgdScalars {
            lr: hp.lr as f32,
            mu: hp.momentum as f32,
            l2: hp.decay.l2() as f32,
            shrink: (1.0 - hp.lr * hp.decay.decoupled()) as f32,
        }
    }
}

/// Adam's scalars as the kernels take them: the moment rates in f32 rounded from f64 (as the
/// CPU's `AdamScalars`), and lr, β₁, β₂ in f64 for the bias corrections the kernel computes
/// from the device's step count.
struct AdamScalars {
    b1: f32,
    omb1: f32,
    b2: f32,
    omb2: f32,
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f32,
    l2: f32,
    shrink: f32,
}

impl AdamScalars {
    fn new(hp: &AdamHp) -> Self {
        AdamScalars {
            b1: hp.beta1 as f32,
            omb1: (1.0 - hp.beta1) as f32,
            b2: hp.beta2 as f32,
            omb2: (1.0 - hp.beta2) as f32,
            lr: hp.lr,
            beta1: hp.beta1,
            beta2: hp.beta2,
            eps: hp.eps as f32,
            l2: hp.decay.l2() as f32,
            shrink: (1.0 - hp.lr * hp.decay.decoupled()) as f32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Column-major GEMM as cuBLAS defines it: `C (m,n) = op(A)·op(B)`, `ld*` the column strides.
    fn sgemm_col_major(args: &CublasArgs, a: &[f32], b: &[f32], c: &mut [f32]) {
        let (m, n, k) = (args.m as usize, args.n as usize, args.k as usize);
        let (lda, ldb, ldc) = (args.ld_first as usize, args.ld_second as usize, args.ldc as usize);
        for j in 0..n {
            for i in 0..m {
                let mut s = 0.0f32;
                for p in 0..k {
                    let x = if args.trans_first { a[p + i * lda] } else { a[i + p * lda] };
                    let y = if args.trans_second { b[j + p * ldb] } else { b[p + j * ldb] };
                    s += x * y;
                }
                c[i + j * ldc] = s;
            }
        }
    }

    /// The row-major → cuBLAS mapping, run through a column-major reference GEMM on the CPU,
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
            // Store A' as A = A'ᵀ (K,M) when ta, and B' as B = B'ᵀ (N,K) when tb, row-major.
            let a: Vec<f32> = if ta { (0..k * m).map(|e| av[(e % m) * k + e / m]).collect() } else { av.clone() };
            let b: Vec<f32> = if tb { (0..n * k).map(|e| bv[(e % k) * n + e / k]).collect() } else { bv.clone() };
            let args = cublas_args(m as i32, n as i32, k as i32, ta, tb);
            let mut c = vec![f32::NAN; m * n];
            sgemm_col_major(&args, &b, &a, &mut c); // B is cuBLAS's first operand
            assert_eq!(c, want, "ta={ta} tb={tb}");
        }
    }

    /// Summing each run of `sorted_runs` in order (what `embedding_backward_sorted` does) is the
    /// CPU's naive scatter-add, bit for bit.
    #[test]
    fn sorted_runs_reproduce_the_naive_scatter_add_order() {
        let ids = [3u32, 1, 3, 0, 1, 3, 2, 0];
        let d = 2;
        let dout: Vec<f32> = (0..ids.len() * d).map(|x| (x as f32).sin()).collect();
        let mut want = vec![0.5f32; 4 * d];
        for (b, &id) in ids.iter().enumerate() {
            for j in 0..d {
                want[id as usize * d + j] += dout[b * d + j];
            }
        }
        let (order, starts) = sorted_runs(&ids);
        assert_eq!(starts, vec![0, 2, 4, 5, 8]);
        let mut got = vec![0.5f32; 4 * d];
        for s in 0..starts.len() - 1 {
            let row = ids[order[starts[s] as usize] as usize] as usize;
            for j in 0..d {
                let mut acc = got[row * d + j];
                for &p in &order[starts[s] as usize..starts[s + 1] as usize] {
                    acc += dout[p as usize * d + j];
                }
                got[row * d + j] = acc;
            }
        }
        assert_eq!(got, want);
    }
}
