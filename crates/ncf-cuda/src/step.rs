//! The GPU's training step: the **fused step** (`kernels/fused.cu`, planned by
//! [`crate::fused`]), three launches per step in place of the reference step's ~58, for every
//! model the fused kernels take (MF, GMF, MLP and NeuMF with up to 8 dense layers) under Adam
//! with lazy embedding rows, the training default. Anything else (SGD, dense embedding
//! updates, a model too large for a tile's shared memory) runs the reference step
//! ([`ncf_model::train_step`]), and [`Step::name`] says which ran.
//!
//! Both record into a CUDA graph: the trainer runs the first step eagerly (it allocates the
//! step's scratch and uploads its table), then records steps and replays them. Allocating or
//! copying from the host while recording is an error (`CudaBackend::not_capturing`).
//!
//! Tested against the reference step on the CPU emulator (`tests/fused_step.rs`: four models,
//! batches 1, 255, 256 and 4,096, three thread orders) and on a GPU by `tests/parity.rs`.

use crate::backend::CudaBackend;
use crate::fused::{EMPTY, FusedBufs, FusedModel, FusedTab};
use cudarc::driver::CudaSlice;
use ncf_core::{Error, Result, check};
use ncf_model::{AnyModel, Batch, FastStep, Model, Optimizer, Step, StepScratch, train_step};

/// The fused step's device buffers, allocated on its first step.
struct Fused {
    model: FusedModel,
    partials: CudaSlice<f32>,
    sample_grad: [CudaSlice<f32>; 2],
    next: [CudaSlice<u32>; 2],
    last: [CudaSlice<u32>; 2],
    rowinfo: [CudaSlice<u32>; 2],
    scalars: CudaSlice<f32>,
    /// The table as last uploaded (compared field by field each step; its words are built
    /// only to upload a changed table), and its device copy.
    uploaded: Option<FusedTab>,
    tab: CudaSlice<u64>,
}

/// The step [`FastStep`] gives on a GPU.
pub struct CudaStep {
    max_batch: usize,
    /// Decided on the first step: the fused step's buffers, or why it does not apply.
    state: Option<std::result::Result<Fused, String>>,
}

impl FastStep for CudaBackend {
    type Step = CudaStep;
    fn fast_step(&self, max_batch: usize) -> Result<CudaStep> {
        Ok(CudaStep { max_batch, state: None })
    }
}

impl CudaStep {
    /// Why the fused step does not run (after the first step), if it does not.
    pub fn fallback_reason(&self) -> Option<&str> {
        match &self.state {
            Some(Err(why)) => Some(why),
            _ => None,
        }
    }
}

impl Fused {
    fn new(be: &CudaBackend, model: FusedModel, max_batch: usize) -> Result<Fused> {
        const OP: &str = "fused_step";
        let sw = model.side_width();
        let two = |n: usize| -> Result<[CudaSlice<f32>; 2]> { Ok([be.raw_zeros(OP, n)?, be.raw_zeros(OP, n)?]) };
        let empty = |rows: usize| be.raw_upload(OP, &vec![EMPTY; rows]);
        Ok(Fused {
            partials: be.raw_zeros(OP, model.partials_len(max_batch))?,
            sample_grad: two(max_batch * sw)?,
            next: [be.raw_zeros(OP, max_batch)?, be.raw_zeros(OP, max_batch)?],
            last: [empty(model.rows[0])?, empty(model.rows[1])?],
            rowinfo: [be.raw_zeros(OP, 2 * model.rows[0])?, be.raw_zeros(OP, 2 * model.rows[1])?],
            scalars: be.raw_zeros(OP, 6)?,
            uploaded: None,
            tab: be.raw_zeros(OP, crate::fused::TAB_BYTES / 8)?,
            model,
        })
    }

    /// The table for this step's buffers, uploaded when an address changed (only the first
    /// step, unless the caller swaps buffers).
    fn table(
        &mut self,
        be: &CudaBackend,
        model: &mut AnyModel<CudaBackend>,
        opt: &mut Optimizer<CudaBackend>,
        batch: &Batch<CudaBackend>,
        scratch: &StepScratch<CudaBackend>,
    ) -> Result<u64> {
        let params = model.params();
        let (s1, s2, t) = opt.state_mut();
        let pmv = |k: usize| [be.ad(&params.tensors[k].buf), be.ad(&s1[k]), be.ad(&s2[k])];
        let mut emb = [[[0u64; 3]; 2]; 2];
        for (side, tables) in self.model.tables.iter().enumerate() {
            for (j, &k) in tables.iter().enumerate() {
                emb[side][j] = pmv(k);
            }
        }
        let bufs = FusedBufs {
            users: be.ad(&batch.users.dev),
            items: be.ad(&batch.items.dev),
            labels: be.ad(&batch.labels),
            emb,
            dense: self.model.dense.iter().map(|&k| pmv(k)).collect(),
            partials: be.ad(&self.partials),
            sample_grad: [be.ad(&self.sample_grad[0]), be.ad(&self.sample_grad[1])],
            next: [be.ad(&self.next[0]), be.ad(&self.next[1])],
            last: [be.ad(&self.last[0]), be.ad(&self.last[1])],
            rowinfo: [be.ad(&self.rowinfo[0]), be.ad(&self.rowinfo[1])],
            t: be.ad(&t.dev),
            scalars: be.ad(&self.scalars),
            loss: be.ad(&scratch.loss),
        };
        let tab = self.model.tab(&bufs);
        if self.uploaded != Some(tab) {
            be.raw_write("fused_step", &mut self.tab, &tab.words())?;
            self.uploaded = Some(tab);
        }
        Ok(be.ad(&self.tab))
    }
}

impl Step<CudaBackend> for CudaStep {
    fn name(&self) -> &'static str {
        match &self.state {
            Some(Err(_)) => "cuda-reference",
            _ => "cuda-fused",
        }
    }

    fn step(
        &mut self,
        be: &CudaBackend,
        model: &mut AnyModel<CudaBackend>,
        opt: &mut Optimizer<CudaBackend>,
        batch: &Batch<CudaBackend>,
        scratch: &mut StepScratch<CudaBackend>,
    ) -> Result<()> {
        const OP: &str = "fused_step";
        if self.state.is_none() {
            self.state = Some(match FusedModel::of(model.params(), &opt.cfg) {
                Ok(m) => Ok(Fused::new(be, m, self.max_batch)?),
                Err(why) => Err(why),
            });
        }
        let Some(Ok(fused)) = self.state.as_mut() else {
            return train_step(be, model, opt, batch, scratch);
        };
        let b = batch.len;
        if b > self.max_batch {
            return Err(Error::invalid(
                OP,
                "batch",
                format!("{b} rows exceed the step's max_batch {}", self.max_batch),
            ));
        }
        // Ids written from the host are checked here (the sampler's are in range by
        // construction), as every op of the reference step checks them.
        for (name, ids, rows) in
            [("users", &batch.users, fused.model.rows[0]), ("items", &batch.items, fused.model.rows[1])]
        {
            if let Some(host) = &ids.host {
                check::ids(OP, name, &host[..b.min(host.len())], rows)?;
            }
        }
        let tab = fused.table(be, model, opt, batch, scratch)?;
        be.exec(OP, fused.model.plan(tab, b))?;
        // The kernels advanced the device's step count (a host mirror would be stale); the
        // host's count follows.
        opt.state_mut().2.written_by_device(1);
        opt.t += 1;
        model.params_and_grads().0.touch();
        Ok(())
    }
}
