//! `CudaBackend`: the [`Backend`] trait on an NVIDIA GPU, f32, one stream. Each op takes the
//! device addresses and lengths of its buffers, checks them with the shared checks every
//! backend calls (`ncf_core::check`, through [`crate::ops`]: the CPU's typed errors) and
//! builds its launch plan with [`crate::plan`] (kernel, grid, block, shared memory,
//! arguments; cuBLAS calls as steps too), then executes it: `cuLaunchKernel` on
//! the loaded function of each [`Kernel`], `cublasSgemm` for each GEMM step. The emulator tests
//! (`tests/emulated.rs`) run the same plans on the CPU.
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
//! * The **row plan** of a batch's ids (its distinct rows, in order of first appearance, and
//!   each row's batch positions in batch order) is built on the device in four launches
//!   (`rows_count`, `rows_scan`, `rows_place`, `rows_sort` in `embedding.cu`) whose work follows
//!   the batch, once per id buffer and batch, and cached with the ids: the deterministic
//!   scatter-add and the lazy optimizers read it.
//! * Adam's step count and the sampler's batch number are device counters
//!   ([`Backend::counter_add`]), so one training step can be recorded as a CUDA graph and
//!   replayed ([`Backend::capture`]).
use crate::device::probe;
use crate::error::CudaError;
use crate::kernels::{SOURCES, unit};
use crate::ops::{self, IdMem, Mem};
use crate::plan::{self, Addr, Arg, Kernel, LOSS_BLOCKS, Loss, MAX_ARGS, Plan, RowPlanBufs, Step};
pub use crate::plan::{CublasArgs, GpuGemm, cublas_args};
use cudarc::cublas::{CudaBlas, sys::cublasOperation_t};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaGraph, CudaSlice, CudaStream, DevicePtr, DeviceRepr, ValidAsZeroBits, sys,
};
use ncf_core::check;
use ncf_core::sample::SampleTables;
use ncf_core::{AdamHp, Backend, Error, Result, SgdHp};
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// The order in which the deterministic scatter-add visits a batch: batch positions grouped by
/// id, the ids in order of first appearance, each group in batch order, and the start of each
/// group, closed by `ids.len()`: the host reference of the row plan (`order`, `seg`; `uniq` is
/// the ids in that order) that the `rows_*` kernels build on the device (`tests/emulated.rs`
/// checks them against it).
pub fn sorted_runs(ids: &[u32]) -> (Vec<u32>, Vec<u32>) {
    let mut first = std::collections::HashMap::new();
    for (k, &id) in ids.iter().enumerate() {
        first.entry(id).or_insert(k);
    }
    let mut order: Vec<u32> = (0..ids.len() as u32).collect();
    order.sort_by_key(|&p| first[&ids[p as usize]]); // stable: batch order within a group
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
    pub(crate) dev: CudaSlice<u32>,
    /// What the host last wrote (range checks read it), or `None` when the device wrote the
    /// ids (then they are in range by construction).
    pub(crate) host: Option<Vec<u32>>,
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

    pub(crate) fn written_by_device(&mut self, len: usize) {
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
    /// Per-row first batch position; all `u32::MAX` between plans.
    first: CudaSlice<u32>,
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
    /// The loaded kernels, indexed by [`Kernel`] (`Kernel::ALL` order).
    funcs: Vec<CudaFunction>,
    blas: CudaBlas,
    pub gemm: GpuGemm,
    /// Scatter-add in a fixed order (the row plan) instead of with atomics.
    pub deterministic: bool,
    /// Per-block loss partial sums (`LOSS_BLOCKS` floats) and the finished-block counter of the
    /// single-launch loss reduction.
    partials: Mutex<(CudaSlice<f32>, CudaSlice<u32>)>,
    pub device_name: String,
    /// Set while [`Backend::capture`] records: allocating or copying from the host then is an
    /// error (a recorded graph would replay a stale copy or free memory it still uses).
    capturing: AtomicBool,
}

fn dev_err(op: &'static str) -> impl Fn(cudarc::driver::DriverError) -> Error {
    move |e| Error::Device { op, message: e.to_string() }
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
        let mut modules = Vec::new();
        let cache_dir = crate::cache::default_dir();
        for &(file, src) in SOURCES {
            let (cubin, _) = crate::cache::cubin(file, &unit(src), arch, cache_dir.as_deref())?;
            let module = ctx.load_module(cudarc::nvrtc::Ptx::from_binary(cubin)).map_err(call("cuModuleLoadData"))?;
            modules.push((file, module));
        }
        let mut funcs = Vec::with_capacity(Kernel::ALL.len());
        for &k in Kernel::ALL {
            let Some((_, module)) = modules.iter().find(|(file, _)| *file == k.file()) else {
                return Err(CudaError::Call { call: "cuModuleGetFunction", status: format!("no module {}", k.file()) });
            };
            funcs.push(module.load_function(k.name()).map_err(call("cuModuleGetFunction"))?);
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
            capturing: AtomicBool::new(false),
        })
    }

    /// `(free, total)` bytes of the device's memory (`cuMemGetInfo`).
    pub fn memory(&self) -> Result<(usize, usize)> {
        self.stream.context().bind_to_thread().map_err(dev_err("cuCtxSetCurrent"))?;
        cudarc::driver::result::mem_get_info().map_err(dev_err("cuMemGetInfo"))
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

    /// The device address of `buf` (for a plan). Event tracking is off (see [`CudaBackend::new`]),
    /// so cudarc's read/write records are no-ops and the guard may drop at once.
    pub(crate) fn ad<T>(&self, buf: &CudaSlice<T>) -> Addr {
        buf.device_ptr(&self.stream).0
    }

    /// An error when a graph is being recorded: `op` would allocate or copy from the host.
    pub(crate) fn not_capturing(&self, op: &'static str) -> Result<()> {
        if self.capturing.load(Ordering::Relaxed) {
            return Err(Error::invalid(
                op,
                "capture",
                "allocates or copies from the host while a CUDA graph is being recorded (run one step \
                 eagerly first, so that every buffer exists before recording)",
            ));
        }
        Ok(())
    }

    /// `n` zeroed elements of any plain type (the fused step's scratch).
    pub(crate) fn raw_zeros<T: DeviceRepr + ValidAsZeroBits>(
        &self,
        op: &'static str,
        n: usize,
    ) -> Result<CudaSlice<T>> {
        self.not_capturing(op)?;
        self.stream.alloc_zeros::<T>(n.max(1)).map_err(dev_err(op))
    }

    /// A device copy of `host` (non-empty).
    pub(crate) fn raw_upload<T: DeviceRepr>(&self, op: &'static str, host: &[T]) -> Result<CudaSlice<T>> {
        self.not_capturing(op)?;
        self.stream.clone_htod(host).map_err(dev_err(op))
    }

    /// `dst[..src.len()] = src` from the host.
    pub(crate) fn raw_write<T: DeviceRepr>(&self, op: &'static str, dst: &mut CudaSlice<T>, src: &[T]) -> Result<()> {
        self.not_capturing(op)?;
        let mut view = dst.slice_mut(..src.len());
        self.stream.memcpy_htod(src, &mut view).map_err(dev_err(op))
    }

    /// Runs `plan` on the stream: each launch with `cuLaunchKernel`, each GEMM with
    /// `cublasSgemm`. Nothing is allocated.
    pub(crate) fn exec(&self, op: &'static str, plan: Result<Plan>) -> Result<()> {
        for step in plan?.steps() {
            match step {
                Step::Kernel(l) => self.launch(op, l)?,
                Step::Gemm(g) => {
                    let trans =
                        |t: bool| if t { cublasOperation_t::CUBLAS_OP_T } else { cublasOperation_t::CUBLAS_OP_N };
                    // SAFETY: the plan comes from `plan::gemm`, whose callers checked that the
                    // buffers behind `a`, `b`, `c` (live device allocations of this context,
                    // borrowed by the op for this call) hold the m·k, k·n, m·n elements the
                    // leading dimensions address; alpha and beta are host scalars read during
                    // the call; the handle is bound to this backend's stream.
                    unsafe {
                        cudarc::cublas::result::sgemm(
                            *self.blas.handle(),
                            trans(g.trans_a),
                            trans(g.trans_b),
                            g.m,
                            g.n,
                            g.k,
                            &g.alpha,
                            g.a as *const f32,
                            g.lda,
                            g.b as *const f32,
                            g.ldb,
                            &g.beta,
                            g.c as *mut f32,
                            g.ldc,
                        )
                    }
                    .map_err(|e| Error::Device { op, message: e.to_string() })?;
                }
            }
        }
        Ok(())
    }

    /// `cuLaunchKernel` of one planned launch.
    fn launch(&self, op: &'static str, l: &plan::Launch) -> Result<()> {
        let args = l.args();
        let mut params = [std::ptr::null_mut::<c_void>(); MAX_ARGS];
        for (p, a) in params.iter_mut().zip(args) {
            *p = match a {
                Arg::Ptr(v) | Arg::U64(v) => v as *const u64 as *mut c_void,
                Arg::I32(v) => v as *const i32 as *mut c_void,
                Arg::U32(v) => v as *const u32 as *mut c_void,
                Arg::I64(v) => v as *const i64 as *mut c_void,
                Arg::F32(v) => v as *const f32 as *mut c_void,
                Arg::F64(v) => v as *const f64 as *mut c_void,
            };
        }
        let f = &self.funcs[l.kernel as usize];
        // SAFETY: `f` is `l.kernel`, loaded from its module in `new` (which outlives the
        // backend's use of it). The plan builders of `plan.rs` give each kernel exactly its
        // parameters in kernels/*.cu, in order and with the same types (tests/emulated.rs
        // runs every builder's plans on the emulator, which rejects a launch whose argument
        // count or types differ from the kernel's); `params` points at those values, which
        // `l` keeps alive through the call (the driver copies them before returning). Pointer
        // arguments are device addresses of buffers the op borrows for this call and checked
        // to be large enough (or null where the kernel accepts it).
        unsafe {
            cudarc::driver::result::launch_kernel(
                f.cu_function(),
                l.grid,
                l.block,
                l.smem,
                self.stream.cu_stream(),
                &mut params[..args.len()],
            )
        }
        .map_err(dev_err(op))
    }

    /// A mean loss over `b` rows (`bce_with_logits` or `mse`), with the backend's partial-sum
    /// buffers: [`ops::mean_loss`].
    fn mean_loss(
        &self,
        op: &'static str,
        loss_fn: Loss,
        (x, y): (&CudaSlice<f32>, &CudaSlice<f32>),
        b: usize,
        (loss, dx): (&mut CudaSlice<f32>, &mut CudaSlice<f32>),
    ) -> Result<()> {
        let guard = self.partials.lock().map_err(|_| Error::invalid(op, "partials", "lock poisoned"))?;
        let (partials, done) = &*guard;
        let bufs = (self.ad(partials), self.ad(done));
        self.exec(op, ops::mean_loss(loss_fn, (self.m(x), self.m(y)), b, (self.m(loss), self.m(dx)), bufs))
    }

    /// A float buffer as [`ops`] takes it.
    fn m(&self, buf: &CudaSlice<f32>) -> Mem {
        Mem { addr: self.ad(buf), len: buf.len() }
    }

    /// An id buffer as [`ops`] takes it.
    fn idm<'a>(&self, ids: &'a DevIds) -> IdMem<'a> {
        IdMem {
            addr: self.ad(&ids.dev),
            cap: ids.cap(),
            host: ids.host.as_deref(),
            live: ids.len,
            count: ids.count.as_ref().map(|c| self.ad(c)),
        }
    }

    /// The row plan of `ids[..b]` over a table of `n` rows, computed on the device unless the
    /// cached one is current. Returned locked; its buffers are valid until the ids change.
    fn row_plan<'a>(
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
            // Allocated once per id buffer, outside any graph capture (the first, eager step);
            // during one it is an error.
            let z = |len: usize| self.raw_zeros::<u32>(op, len);
            *guard = Some(RowPlan {
                count: z(n)?,
                first: self.raw_upload(op, &vec![u32::MAX; n.max(1)])?,
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
            let bufs = self.row_plan_bufs(plan);
            self.exec(op, plan::row_plan(self.ad(&ids.dev), &bufs, b, n, cap))?;
            plan.fresh = Some((ids.generation, b, n));
        }
        Ok(guard)
    }

    /// The addresses of a row plan's buffers.
    fn row_plan_bufs(&self, p: &RowPlan) -> RowPlanBufs {
        RowPlanBufs {
            count: self.ad(&p.count),
            first: self.ad(&p.first),
            fill: self.ad(&p.fill),
            order: self.ad(&p.order),
            seg: self.ad(&p.seg),
            uniq: self.ad(&p.uniq),
            nuniq: self.ad(&p.nuniq),
        }
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
        self.raw_zeros("zeros", len)
    }
    fn upload(&self, host: &[f32]) -> Result<Self::Buf> {
        if host.is_empty() {
            return self.zeros(1);
        }
        self.raw_upload("upload", host)
    }
    fn write(&self, dst: &mut Self::Buf, src: &[f32]) -> Result<()> {
        check::write(dst.len(), src.len())?;
        self.not_capturing("write")?;
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
        self.exec("fill", ops::fill(self.m(buf), n, value))
    }
    fn zeros_ids(&self, len: usize) -> Result<Self::Ids> {
        let dev = self.raw_zeros::<u32>("zeros_ids", len)?;
        Ok(DevIds { dev, host: Some(vec![0; len.max(1)]), len, count: None, generation: 0, plan: Mutex::new(None) })
    }
    fn write_ids(&self, dst: &mut Self::Ids, src: &[u32]) -> Result<()> {
        check::write_ids(dst.cap(), src.len())?;
        self.not_capturing("write_ids")?;
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
        check::download_ids(ids.cap(), n)?;
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
        let p = ops::embedding_forward(self.m(table), n, d, self.idm(ids), b, self.m(out));
        self.exec("embedding_forward", p)
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
        let p = ops::gather_add_relu(self.m(a), na, self.idm(ia), self.m(c), nc, self.idm(ic), d, b, self.m(out));
        self.exec("gather_add_relu", p)
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
        let (dm, tm) = (self.m(dout), self.m(dtable));
        if let Some(p) = ops::embedding_backward(dm, self.idm(ids), (b, d), tm, n, self.deterministic)? {
            return self.exec(OP, Ok(p));
        }
        // Each distinct row sums its batch positions in batch order (the row plan).
        let guard = self.row_plan(OP, ids, b, n)?;
        let Some(rows) = guard.as_ref() else { unreachable!("row_plan() returns a computed plan") };
        self.exec(OP, plan::embedding_backward_sorted(dm.addr, &self.row_plan_bufs(rows), tm.addr, b, d))
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
        let (inp, w, bias, out) = (self.m(inp), self.m(w), self.m(bias), self.m(out));
        self.exec("linear_forward", ops::linear_forward(self.gemm, inp, w, bias, out, b, i, o))
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
        // z = inp·wᵀ + bias and x = relu(z) in the GEMM's epilogue (cuBLAS: sgemm, then one
        // bias_relu_forward pass).
        let (inp, w, bias, z, x) = (self.m(inp), self.m(w), self.m(bias), self.m(z), self.m(x));
        self.exec("linear_relu_forward", ops::linear_relu_forward(self.gemm, inp, w, bias, z, x, b, i, o))
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
        let dinp = dinp.map(|d| self.m(d));
        let (dout, inp, w, dw, dbias) = (self.m(dout), self.m(inp), self.m(w), self.m(dw), self.m(dbias));
        self.exec("linear_backward", ops::linear_backward(self.gemm, dout, inp, w, dinp, dw, dbias, b, i, o))
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
        // dz and dbias in one pass (one block per output column), then the two GEMMs.
        let dinp = dinp.map(|d| self.m(d));
        let (x, dx, dz, inp, w) = (self.m(x), self.m(dx), self.m(dz), self.m(inp), self.m(w));
        let (dw, dbias) = (self.m(dw), self.m(dbias));
        let p = ops::linear_relu_backward(self.gemm, x, dx, dz, inp, w, dinp, dw, dbias, b, i, o);
        self.exec("linear_relu_backward", p)
    }

    fn relu_forward(&self, inp: &Self::Buf, out: &mut Self::Buf, n: usize) -> Result<()> {
        self.exec("relu_forward", ops::relu_forward(self.m(inp), self.m(out), n))
    }
    fn relu_backward(&self, out: &Self::Buf, dout: &Self::Buf, dinp: &mut Self::Buf, n: usize) -> Result<()> {
        self.exec("relu_backward", ops::relu_backward(self.m(out), self.m(dout), self.m(dinp), n))
    }
    fn sigmoid_forward(&self, inp: &Self::Buf, out: &mut Self::Buf, n: usize) -> Result<()> {
        self.exec("sigmoid_forward", ops::sigmoid_forward(self.m(inp), self.m(out), n))
    }

    fn bce_with_logits(
        &self,
        logits: &Self::Buf,
        labels: &Self::Buf,
        b: usize,
        loss: &mut Self::Buf,
        dlogits: &mut Self::Buf,
    ) -> Result<()> {
        self.mean_loss("bce_with_logits", Loss::BceWithLogits, (logits, labels), b, (loss, dlogits))
    }

    fn mse(
        &self,
        pred: &Self::Buf,
        target: &Self::Buf,
        b: usize,
        loss: &mut Self::Buf,
        dpred: &mut Self::Buf,
    ) -> Result<()> {
        self.mean_loss("mse", Loss::Mse, (pred, target), b, (loss, dpred))
    }

    fn gmf_forward(&self, u: &Self::Buf, v: &Self::Buf, out: &mut Self::Buf, n: usize) -> Result<()> {
        self.exec("gmf_forward", ops::gmf_forward(self.m(u), self.m(v), self.m(out), n))
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
        let (dout, u, v, du, dv) = (self.m(dout), self.m(u), self.m(v), self.m(du), self.m(dv));
        self.exec("gmf_backward", ops::gmf_backward(dout, u, v, du, dv, n))
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
        self.exec("concat_cols", ops::concat_cols(self.m(a), da, self.m(c), dc, b, self.m(out)))
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
        self.exec("split_cols", ops::split_cols(self.m(dout), da, dc, b, self.m(grad_a), self.m(grad_c)))
    }
    fn rowdot_forward(&self, u: &Self::Buf, v: &Self::Buf, b: usize, d: usize, out: &mut Self::Buf) -> Result<()> {
        self.exec("rowdot_forward", ops::rowdot_forward(self.m(u), self.m(v), b, d, self.m(out)))
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
        let (dout, u, v, du, dv) = (self.m(dout), self.m(u), self.m(v), self.m(du), self.m(dv));
        self.exec("rowdot_backward", ops::rowdot_backward(dout, u, v, b, d, du, dv))
    }
    fn add_assign(&self, out: &mut Self::Buf, x: &Self::Buf, n: usize) -> Result<()> {
        self.exec("add_assign", ops::add_assign(self.m(out), self.m(x), n))
    }
    fn dropout(&self, inp: &Self::Buf, out: &mut Self::Buf, n: usize, p: f64, seed: u64) -> Result<()> {
        self.exec("dropout", ops::dropout(self.m(inp), self.m(out), n, p, seed))
    }
    fn batchnorm_forward_train(
        &self,
        x: &Self::Buf,
        gamma: &Self::Buf,
        beta: &Self::Buf,
        b: usize,
        h: usize,
        eps: f64,
        momentum: f64,
        y: &mut Self::Buf,
        xhat: &mut Self::Buf,
        inv: &mut Self::Buf,
        (rmean, rvar): (&mut Self::Buf, &mut Self::Buf),
    ) -> Result<()> {
        let plan = ops::batchnorm_forward_train(
            (self.m(x), self.m(gamma), self.m(beta)),
            (self.m(y), self.m(xhat), self.m(inv)),
            (self.m(rmean), self.m(rvar)),
            b,
            h,
            eps,
            momentum,
        );
        self.exec("batchnorm_forward_train", plan)
    }
    fn batchnorm_forward_eval(
        &self,
        x: &Self::Buf,
        gamma: &Self::Buf,
        beta: &Self::Buf,
        rmean: &Self::Buf,
        rvar: &Self::Buf,
        b: usize,
        h: usize,
        eps: f64,
        y: &mut Self::Buf,
    ) -> Result<()> {
        let plan = ops::batchnorm_forward_eval(
            (self.m(x), self.m(gamma), self.m(beta)),
            (self.m(rmean), self.m(rvar)),
            self.m(y),
            b,
            h,
            eps,
        );
        self.exec("batchnorm_forward_eval", plan)
    }
    fn batchnorm_backward(
        &self,
        dy: &Self::Buf,
        xhat: &Self::Buf,
        gamma: &Self::Buf,
        inv: &Self::Buf,
        b: usize,
        h: usize,
        dx: &mut Self::Buf,
        dgamma: &mut Self::Buf,
        dbeta: &mut Self::Buf,
    ) -> Result<()> {
        let plan = ops::batchnorm_backward(
            (self.m(dy), self.m(xhat), self.m(gamma), self.m(inv)),
            (self.m(dx), self.m(dgamma), self.m(dbeta)),
            b,
            h,
        );
        self.exec("batchnorm_backward", plan)
    }
    fn scale(&self, buf: &mut Self::Buf, n: usize, s: f32) -> Result<()> {
        self.exec("scale", ops::scale(self.m(buf), n, s))
    }
    fn add_scalar(&self, out: &mut Self::Buf, s: &Self::Buf, n: usize) -> Result<()> {
        self.exec("add_scalar", ops::add_scalar(self.m(out), self.m(s), n))
    }
    fn sum_into(&self, x: &Self::Buf, n: usize, acc: &mut Self::Buf) -> Result<()> {
        self.exec("sum_into", ops::sum_into(self.m(x), n, self.m(acc)))
    }

    fn sgd_step(&self, p: &mut Self::Buf, g: &mut Self::Buf, mom: &mut Self::Buf, n: usize, hp: &SgdHp) -> Result<()> {
        self.exec("sgd_step", ops::sgd_step(self.m(p), self.m(g), self.m(mom), n, hp))
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
        let (p, g, m, v) = (self.m(p), self.m(g), self.m(m), self.m(v));
        self.exec("adam_step", ops::adam_step(p, g, m, v, n, hp, self.idm(t)))
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
        let (p, g, mom) = (self.m(p), self.m(g), self.m(mom));
        self.exec("sgd_step_rows", ops::sgd_step_rows(p, g, mom, self.idm(rows), d, n, hp))
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
        let (p, g, m, v) = (self.m(p), self.m(g), self.m(m), self.m(v));
        self.exec("adam_step_rows", ops::adam_step_rows(p, g, m, v, self.idm(rows), d, n, hp, self.idm(t)))
    }
    fn unique_ids(&self, ids: &Self::Ids, b: usize, n: usize, out: &mut Self::Ids) -> Result<()> {
        const OP: &str = "unique_ids";
        ops::unique_ids(self.idm(ids), b, n, self.idm(out))?;
        if b == 0 {
            out.written_by_device(0);
            out.count = None;
            return Ok(());
        }
        let guard = self.row_plan(OP, ids, b, n)?;
        let Some(plan) = guard.as_ref() else { unreachable!("row_plan() returns a computed plan") };
        // The distinct rows and their count, copied device to device (capacity b: at most b).
        let src = plan.uniq.slice(..b);
        let mut dst = out.dev.slice_mut(..b);
        self.stream.memcpy_dtod(&src, &mut dst).map_err(dev_err(OP))?;
        if out.count.is_none() {
            out.count = Some(self.raw_zeros::<u32>(OP, 1)?);
        }
        let Some(count) = out.count.as_mut() else { unreachable!("set above") };
        self.stream.memcpy_dtod(&plan.nuniq, count).map_err(dev_err(OP))?;
        out.written_by_device(b);
        Ok(())
    }
    fn counter_add(&self, c: &mut Self::Ids, add: u32) -> Result<()> {
        self.exec("counter_add", ops::counter_add(self.idm(c), add))?;
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
        let t = plan::SampleBufs {
            train_off: self.ad(&tables.train_off.dev),
            train_items: self.ad(&tables.train_items.dev),
            known_off: self.ad(&tables.known_off.dev),
            known_items: self.ad(&tables.known_items.dev),
            n_users: tables.n_users,
            n_items: tables.n_items,
            n_neg: tables.n_neg,
            rows: tables.rows(),
        };
        // The batch, then state[0] += 1 on the device (one plan).
        let p = ops::sample_batch(&t, self.idm(state), batch, b, self.idm(users), self.idm(items), self.m(labels));
        self.exec("sample_batch", p)?;
        users.written_by_device(b);
        items.written_by_device(b);
        // The device now owns the state; a host mirror would be stale.
        state.host = None;
        state.generation += 1;
        Ok(())
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
        let (t, o, s) = (self.idm(targets), self.idm(seen_off), self.idm(seen));
        let p = ops::rank_unseen(self.m(scores), u, n, t, o, s, self.idm(ranks))?;
        if u == 0 {
            return Ok(());
        }
        self.exec("rank_unseen", Ok(p))?;
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
        let p = ops::top_k(self.m(scores), u, n, k, self.idm(seen_off), self.idm(seen), self.idm(out))?;
        if p.steps().is_empty() {
            return Ok(());
        }
        self.exec("top_k", Ok(p))?;
        out.written_by_device(u * k);
        Ok(())
    }

    type Graph = CudaGraph;

    fn capture(&self, f: &mut dyn FnMut() -> Result<()>) -> Result<Option<CudaGraph>> {
        let err = |op: &'static str| move |e: cudarc::driver::DriverError| Error::Device { op, message: e.to_string() };
        self.stream
            .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(err("cuStreamBeginCapture"))?;
        self.capturing.store(true, Ordering::Relaxed);
        let recorded = f();
        self.capturing.store(false, Ordering::Relaxed);
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

#[cfg(test)]
mod tests {
    use super::*;

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
        // Rows in order of first appearance (3, 1, 0, 2), each with its positions in batch order.
        assert_eq!(order, vec![0, 2, 5, 1, 4, 3, 7, 6]);
        assert_eq!(starts, vec![0, 3, 5, 7, 8]);
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
