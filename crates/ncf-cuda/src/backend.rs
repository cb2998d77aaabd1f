//! `CudaBackend`: the [`Backend`] trait on an NVIDIA GPU, f32, one stream. Each op validates
//! its sizes on the host exactly as the CPU backend does (same typed errors), takes the device
//! addresses of its buffers, builds its launch plan with [`crate::plan`] (kernel, grid, block,
//! shared memory, arguments; cuBLAS calls as steps too) and executes it: `cuLaunchKernel` on
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
//! * The **row plan** of a batch's ids (its distinct rows, ascending, and each row's batch
//!   positions in batch order) is built on the device in four launches (`rows_count`,
//!   `rows_scan`, `rows_place`, `rows_sort` in `embedding.cu`), once per id buffer and batch,
//!   and cached with the ids: the deterministic scatter-add and the lazy optimizers read it.
//! * Adam's step count and the sampler's batch number are device counters
//!   ([`Backend::counter_add`]), so one training step can be recorded as a CUDA graph and
//!   replayed ([`Backend::capture`]).
use crate::device::probe;
use crate::error::CudaError;
use crate::kernels::{SOURCES, unit};
use crate::plan::{self, Addr, Arg, Kernel, LOSS_BLOCKS, Loss, MAX_ARGS, Plan, RowPlanBufs, Rows, Step};
pub use crate::plan::{CublasArgs, GpuGemm, cublas_args};
use cudarc::cublas::{CudaBlas, sys::cublasOperation_t};
use cudarc::driver::{CudaContext, CudaFunction, CudaGraph, CudaSlice, CudaStream, DevicePtr, sys};
use ncf_core::error::{check_ids, check_len};
use ncf_core::sample::SampleTables;
use ncf_core::{AdamHp, Backend, Error, Result, SgdHp};
use std::ffi::c_void;
use std::sync::{Arc, Mutex, MutexGuard};

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

    /// The device address of `buf` (for a plan). Event tracking is off (see [`CudaBackend::new`]),
    /// so cudarc's read/write records are no-ops and the guard may drop at once.
    fn ad<T>(&self, buf: &CudaSlice<T>) -> Addr {
        buf.device_ptr(&self.stream).0
    }

    /// Runs `plan` on the stream: each launch with `cuLaunchKernel`, each GEMM with
    /// `cublasSgemm`. Nothing is allocated.
    fn exec(&self, op: &'static str, plan: Result<Plan>) -> Result<()> {
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

    /// A mean loss over `b` rows (`bce_with_logits` or `mse`): [`plan::mean_loss`].
    fn mean_loss(
        &self,
        op: &'static str,
        loss_fn: Loss,
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
        let guard = self.partials.lock().map_err(|_| Error::invalid(op, "partials", "lock poisoned"))?;
        let (partials, done) = &*guard;
        let bufs = (self.ad(partials), self.ad(done));
        self.exec(op, plan::mean_loss(loss_fn, self.ad(x), self.ad(y), self.ad(dx), bufs, self.ad(loss), b))
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
            fill: self.ad(&p.fill),
            order: self.ad(&p.order),
            seg: self.ad(&p.seg),
            uniq: self.ad(&p.uniq),
            nuniq: self.ad(&p.nuniq),
        }
    }

    /// A lazy optimizer's row list: the list, its host count, and the device count of a
    /// `unique_ids` output (null for a host-written list).
    fn rows(&self, rows: &DevIds) -> Rows {
        Rows {
            list: self.ad(&rows.dev),
            cap: rows.cap(),
            nrows_host: rows.len,
            nrows_dev: rows.count.as_ref().map(|c| self.ad(c)),
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
        self.exec("fill", Ok(plan::fill(self.ad(buf), n, value)))
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
        self.exec(OP, plan::embedding_forward(self.ad(table), self.ad(&ids.dev), self.ad(out), b, d))
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
        let (a, c) = ((self.ad(a), self.ad(&ia.dev)), (self.ad(c), self.ad(&ic.dev)));
        self.exec(OP, plan::gather_add_relu(a, c, self.ad(out), b, d))
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
        if !self.deterministic {
            return self
                .exec(OP, plan::embedding_backward_atomic(self.ad(dout), self.ad(&ids.dev), self.ad(dtable), b, d));
        }
        // Each distinct row sums its batch positions in batch order (the row plan).
        let guard = self.row_plan(OP, ids, b, n)?;
        let Some(rows) = guard.as_ref() else { unreachable!("row_plan() returns a computed plan") };
        self.exec(OP, plan::embedding_backward_sorted(self.ad(dout), &self.row_plan_bufs(rows), self.ad(dtable), b, d))
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
        let (inp, w, bias, out) = (self.ad(inp), self.ad(w), self.ad(bias), self.ad(out));
        self.exec(OP, plan::linear_forward(self.gemm, inp, w, bias, out, b, i, o))
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
        let (inp, w, bias, z, x) = (self.ad(inp), self.ad(w), self.ad(bias), self.ad(z), self.ad(x));
        self.exec(OP, plan::linear_relu_forward(self.gemm, inp, w, bias, z, x, b, i, o))
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
        if let Some(dinp) = &dinp {
            check_len(OP, "dinp", dinp.len(), &[b, i])?;
        }
        let dinp = dinp.map(|d| self.ad(d));
        let (dout, inp, w, dw, dbias) = (self.ad(dout), self.ad(inp), self.ad(w), self.ad(dw), self.ad(dbias));
        self.exec(OP, plan::linear_backward(self.gemm, dout, inp, w, dinp, dw, dbias, b, i, o))
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
        if let Some(dinp) = &dinp {
            check_len(OP, "dinp", dinp.len(), &[b, i])?;
        }
        // dz and dbias in one pass (one block per output column), then the two GEMMs.
        let dinp = dinp.map(|d| self.ad(d));
        let (x, dx, dz, inp, w) = (self.ad(x), self.ad(dx), self.ad(dz), self.ad(inp), self.ad(w));
        let (dw, dbias) = (self.ad(dw), self.ad(dbias));
        self.exec(OP, plan::linear_relu_backward(self.gemm, x, dx, dz, inp, w, dinp, dw, dbias, b, i, o))
    }

    fn relu_forward(&self, inp: &Self::Buf, out: &mut Self::Buf, n: usize) -> Result<()> {
        check_len("relu_forward", "inp", inp.len(), &[n])?;
        check_len("relu_forward", "out", out.len(), &[n])?;
        self.exec("relu_forward", Ok(plan::relu_forward(self.ad(inp), self.ad(out), n)))
    }
    fn relu_backward(&self, out: &Self::Buf, dout: &Self::Buf, dinp: &mut Self::Buf, n: usize) -> Result<()> {
        for (t, l) in [("out", out.len()), ("dout", dout.len()), ("dinp", dinp.len())] {
            check_len("relu_backward", t, l, &[n])?;
        }
        self.exec("relu_backward", Ok(plan::relu_backward(self.ad(out), self.ad(dout), self.ad(dinp), n)))
    }
    fn sigmoid_forward(&self, inp: &Self::Buf, out: &mut Self::Buf, n: usize) -> Result<()> {
        check_len("sigmoid_forward", "inp", inp.len(), &[n])?;
        check_len("sigmoid_forward", "out", out.len(), &[n])?;
        self.exec("sigmoid_forward", Ok(plan::sigmoid_forward(self.ad(inp), self.ad(out), n)))
    }

    fn bce_with_logits(
        &self,
        logits: &Self::Buf,
        labels: &Self::Buf,
        b: usize,
        loss: &mut Self::Buf,
        dlogits: &mut Self::Buf,
    ) -> Result<()> {
        self.mean_loss("bce_with_logits", Loss::BceWithLogits, logits, labels, b, loss, dlogits)
    }

    fn mse(
        &self,
        pred: &Self::Buf,
        target: &Self::Buf,
        b: usize,
        loss: &mut Self::Buf,
        dpred: &mut Self::Buf,
    ) -> Result<()> {
        self.mean_loss("mse", Loss::Mse, pred, target, b, loss, dpred)
    }

    fn gmf_forward(&self, u: &Self::Buf, v: &Self::Buf, out: &mut Self::Buf, n: usize) -> Result<()> {
        for (t, l) in [("u", u.len()), ("v", v.len()), ("out", out.len())] {
            check_len("gmf_forward", t, l, &[n])?;
        }
        self.exec("gmf_forward", Ok(plan::gmf_forward(self.ad(u), self.ad(v), self.ad(out), n)))
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
        let (dout, u, v, du, dv) = (self.ad(dout), self.ad(u), self.ad(v), self.ad(du), self.ad(dv));
        self.exec("gmf_backward", Ok(plan::gmf_backward(dout, u, v, du, dv, n)))
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
        self.exec(OP, plan::concat_cols((self.ad(a), da), (self.ad(c), dc), b, self.ad(out)))
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
        self.exec(OP, plan::split_cols(self.ad(dout), (da, dc), b, self.ad(grad_a), self.ad(grad_c)))
    }
    fn rowdot_forward(&self, u: &Self::Buf, v: &Self::Buf, b: usize, d: usize, out: &mut Self::Buf) -> Result<()> {
        const OP: &str = "rowdot_forward";
        check_len(OP, "u", u.len(), &[b, d])?;
        check_len(OP, "v", v.len(), &[b, d])?;
        check_len(OP, "out", out.len(), &[b])?;
        self.exec(OP, plan::rowdot_forward(self.ad(u), self.ad(v), b, d, self.ad(out)))
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
        let (dout, u, v, du, dv) = (self.ad(dout), self.ad(u), self.ad(v), self.ad(du), self.ad(dv));
        self.exec(OP, plan::rowdot_backward(dout, u, v, b, d, du, dv))
    }
    fn add_assign(&self, out: &mut Self::Buf, x: &Self::Buf, n: usize) -> Result<()> {
        check_len("add_assign", "out", out.len(), &[n])?;
        check_len("add_assign", "x", x.len(), &[n])?;
        self.exec("add_assign", Ok(plan::add_assign(self.ad(out), self.ad(x), n)))
    }
    fn add_scalar(&self, out: &mut Self::Buf, s: &Self::Buf, n: usize) -> Result<()> {
        check_len("add_scalar", "out", out.len(), &[n])?;
        check_len("add_scalar", "s", s.len(), &[1])?;
        self.exec("add_scalar", Ok(plan::add_scalar(self.ad(out), self.ad(s), n)))
    }
    fn sum_into(&self, x: &Self::Buf, n: usize, acc: &mut Self::Buf) -> Result<()> {
        check_len("sum_into", "x", x.len(), &[n])?;
        check_len("sum_into", "acc", acc.len(), &[1])?;
        self.exec("sum_into", Ok(plan::sum_into(self.ad(x), n, self.ad(acc))))
    }

    fn sgd_step(&self, p: &mut Self::Buf, g: &mut Self::Buf, mom: &mut Self::Buf, n: usize, hp: &SgdHp) -> Result<()> {
        for (t, l) in [("p", p.len()), ("g", g.len()), ("mom", mom.len())] {
            check_len("sgd_step", t, l, &[n])?;
        }
        self.exec("sgd_step", Ok(plan::sgd_step(self.ad(p), self.ad(g), self.ad(mom), n, hp)))
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
        let (p, g, m, v) = (self.ad(p), self.ad(g), self.ad(m), self.ad(v));
        self.exec("adam_step", Ok(plan::adam_step(p, g, m, v, n, hp, self.ad(&t.dev))))
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
        let rows = self.rows(rows);
        self.exec(OP, plan::sgd_step_rows(self.ad(p), self.ad(g), self.ad(mom), &rows, d, hp))
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
        let (p, g, m, v, rows) = (self.ad(p), self.ad(g), self.ad(m), self.ad(v), self.rows(rows));
        self.exec(OP, plan::adam_step_rows(p, g, m, v, &rows, d, hp, self.ad(&t.dev)))
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
        let guard = self.row_plan(OP, ids, b, n)?;
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
        self.exec("counter_add", Ok(plan::counter_add(self.ad(&c.dev), add)))?;
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
        let (users_a, items_a) = (self.ad(&users.dev), self.ad(&items.dev));
        // The batch, then state[0] += 1 on the device (one plan).
        self.exec(OP, plan::sample_batch(&t, self.ad(&state.dev), batch, b, users_a, items_a, self.ad(labels)))?;
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
        const OP: &str = "rank_unseen";
        check_len(OP, "scores", scores.len(), &[u, n])?;
        check_len(OP, "ranks", ranks.cap(), &[u])?;
        targets.check(OP, "scores", u, n)?;
        let seen_len = seen_csr_len(OP, seen_off, u)?;
        seen.check(OP, "scores", seen_len, n)?;
        if u == 0 {
            return Ok(());
        }
        let seen = plan::Seen { items: self.ad(&seen.dev), off: self.ad(&seen_off.dev) };
        self.exec(OP, plan::full_rank(self.ad(scores), u, n, self.ad(&targets.dev), seen, self.ad(&ranks.dev)))?;
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
        let seen = plan::Seen { items: self.ad(&seen.dev), off: self.ad(&seen_off.dev) };
        let p = plan::top_k(self.ad(scores), u, n, k, seen, self.ad(&out.dev));
        if p.as_ref().is_ok_and(|p| p.steps().is_empty()) {
            return Ok(());
        }
        self.exec(OP, p)?;
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
