//! The fused training step's host side: what the three kernels of `kernels/fused.cu` need to
//! know of a model ([`FusedModel`]: shapes, which tensor is which, the Adam groups), the table
//! they read it from ([`FusedTab`], the same `#[repr(C)]` layout as the kernels' `FusedTab`),
//! the tile size and shared memory, and the step's launch plan ([`FusedModel::plan`]).
//!
//! Pure (addresses and sizes in, plans and tables out): `CudaStep` (`step.rs`) runs it with
//! device addresses; `tests/fused_step.rs` runs the same plans and tables on the CPU emulator
//! with host addresses, against the reference step.
//!
//! Work per step is proportional to the batch: the three launches' grids follow the batch and
//! the dense parameter count, never the embedding tables' rows (the test
//! `plans_do_not_depend_on_the_tables` builds them for 1,000 and 100 M rows).

use crate::plan::{Addr, Arg, Kernel, Launch, Plan, grid, i32_of};
use ncf_core::{AdamHp, Backend, Error, OptimKind, Result};
use ncf_model::{Group, IdSource, OptimConfig, ParamSet, Role};

/// The most dense layers of the MLP tower the kernels take.
pub const MAX_LAYERS: usize = 8;
/// The most dense tensors: two per layer, the head's weight and bias.
pub const MAX_DENSE: usize = 2 * MAX_LAYERS + 2;
/// A list head of `last` that no sample holds (all of `last` between steps).
pub const EMPTY: u32 = u32::MAX;
/// The largest tile (samples per block of `fused_tile`).
pub const MAX_TILE: usize = 128;
/// The smallest: a model whose dense parameters and this many samples' activations do not fit
/// shared memory runs the reference step, whose products are GEMMs (with smaller tiles the
/// per-tile gradient sums would outgrow the work: `(B / tile) × P` floats, 28 G for MLPerf's
/// tower at batch 1 M).
pub const MIN_TILE: usize = 32;
/// The most floats of one side's row gradient (the widths of its tables: NeuMF's GMF and MLP
/// embeddings; the kernels' `FUSED_MAX_SIDE`).
pub const MAX_SIDE: usize = 256;
/// The dynamic shared memory `fused_tile` may use without an opt-in: the dense parameters and
/// one region per sample of the tile must fit.
pub const SHARED_BYTES: usize = 48 * 1024;

/// Rows of tiles `fused_dense_adam` sums side by side (its block is 32 × this; the kernel's
/// `FUSED_GROUPS`).
pub const DENSE_GROUPS: u32 = 8;

/// Which of the four models (the kernels' `kind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FusedKind {
    Mf = 0,
    Gmf = 1,
    Mlp = 2,
    NeuMf = 3,
}

/// A model as the fused kernels see it.
#[derive(Clone, Debug, PartialEq)]
pub struct FusedModel {
    pub kind: FusedKind,
    /// GMF width (GMF, NeuMF), or MF's dot width.
    pub f: usize,
    /// MLP embedding width of each side (MLP, NeuMF).
    pub d: usize,
    /// `[2d, out_0, …, out_{nl−1}]` (MLP, NeuMF); `[0]` otherwise.
    pub widths: Vec<usize>,
    /// Per side (users, items), the index in the `ParamSet` of each embedding table, in the
    /// kernels' order: NeuMF GMF then MLP; MF the factors then the bias.
    pub tables: [Vec<usize>; 2],
    pub table_width: Vec<usize>,
    /// The index in the `ParamSet` of each dense tensor, in the kernels' order: layer `l`'s
    /// weight and bias, then the head's weight and bias (MF: the global bias).
    pub dense: Vec<usize>,
    pub dense_len: Vec<usize>,
    /// Adam group of each dense tensor: 1 weights, 2 biases.
    pub dense_group: Vec<usize>,
    /// Rows of the users' and the items' tables.
    pub rows: [usize; 2],
    /// Adam per group: embeddings, weights, biases.
    pub adam: [AdamHp; 3],
}

/// The device (or, in the emulator tests, host) addresses the step reads and writes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FusedBufs {
    pub users: Addr,
    pub items: Addr,
    pub labels: Addr,
    /// `[side][table]`: the table, Adam's m, Adam's v.
    pub emb: [[[Addr; 3]; 2]; 2],
    /// Per dense tensor (in [`FusedModel::dense`] order): the tensor, m, v.
    pub dense: Vec<[Addr; 3]>,
    /// f32, [`FusedModel::partials_len`].
    pub partials: Addr,
    /// f32 `(max_batch, side_width)` per side.
    pub sample_grad: [Addr; 2],
    /// u32 `(max_batch)` per side.
    pub next: [Addr; 2],
    /// u32 per table row, per side, all [`EMPTY`] before the first step.
    pub last: [Addr; 2],
    /// u32 `(rows, 2)` per side, all zero before the first step.
    pub rowinfo: [Addr; 2],
    /// u32: Adam's step count (the optimizer's device counter).
    pub t: Addr,
    /// f32 (6).
    pub scalars: Addr,
    /// f32 (1): `+=` each step's mean loss.
    pub loss: Addr,
}

/// The kernels' `FusedTab`, field for field (`kernels/fused.cu`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FusedTab {
    kind: i64,
    f: i64,
    d: i64,
    nl: i64,
    width: [i64; MAX_LAYERS + 1],
    ndense: i64,
    nparams: i64,
    dense_off: [i64; MAX_DENSE + 1],
    dense_group: [i64; MAX_DENSE],
    ntables: i64,
    table_width: [i64; 2],
    side_width: i64,
    region: i64,
    users: u64,
    items: u64,
    labels: u64,
    emb: [[u64; 2]; 2],
    emb_m: [[u64; 2]; 2],
    emb_v: [[u64; 2]; 2],
    dense: [u64; MAX_DENSE],
    dense_m: [u64; MAX_DENSE],
    dense_v: [u64; MAX_DENSE],
    partials: u64,
    sample_grad: [u64; 2],
    next: [u64; 2],
    last: [u64; 2],
    rowinfo: [u64; 2],
    t: u64,
    scalars: u64,
    loss: u64,
    lr: [f64; 3],
    beta1: [f64; 3],
    beta2: [f64; 3],
    b1: [f32; 3],
    omb1: [f32; 3],
    b2: [f32; 3],
    omb2: [f32; 3],
    eps: [f32; 3],
    l2: [f32; 3],
    shrink: [f32; 3],
    pad: f32,
}

/// The kernels' `static_assert(sizeof(FusedTab) == 1264)`: change both or neither.
pub const TAB_BYTES: usize = 1264;
const _: () = assert!(std::mem::size_of::<FusedTab>() == TAB_BYTES);

impl FusedTab {
    /// The table as 64-bit words, to upload (the kernels take a `const unsigned long long*`).
    pub fn words(&self) -> Vec<u64> {
        // SAFETY: FusedTab is #[repr(C)], Copy, made only of 8- and 4-byte numbers laid out
        // without padding (TAB_BYTES, a multiple of 8, is checked at compile time to be its
        // size), so its TAB_BYTES bytes are initialised and may be read as bytes.
        let bytes = unsafe { std::slice::from_raw_parts((self as *const FusedTab).cast::<u8>(), TAB_BYTES) };
        bytes.chunks_exact(8).map(|c| u64::from_ne_bytes(c.try_into().unwrap_or([0; 8]))).collect()
    }
}

/// Why the fused step does not apply to this model or optimizer (the caller runs the
/// reference step instead), or the model as the kernels see it.
pub type Support = std::result::Result<FusedModel, String>;

fn group_index(role: Role) -> usize {
    match Group::of(role) {
        Group::Embedding => 0,
        Group::Weight => 1,
        Group::Bias => 2,
    }
}

impl FusedModel {
    /// Reads the model from its parameters (by name, as `ncf-model` builds them) and the
    /// optimizer's configuration. The fused step runs Adam on every group with lazy
    /// (row-sparse) embeddings, the training default; anything else gets `Err(why)`.
    pub fn of<B: Backend>(params: &ParamSet<B>, opt: &OptimConfig) -> Support {
        let adam = |g: &ncf_model::GroupConfig| match g.rule {
            OptimKind::Adam(hp) => Ok(hp),
            OptimKind::Sgd(_) => Err("the fused step runs Adam; SGD runs the reference step".to_string()),
        };
        if !opt.embedding.lazy {
            return Err("the fused step updates embedding rows lazily; dense updates run the reference step".into());
        }
        let adam = [adam(&opt.embedding)?, adam(&opt.weight)?, adam(&opt.bias)?];
        let find = |name: &str| params.index(name);
        let t = |k: usize| &params.tensors[k];
        let pair = |prefix: &str| -> Option<[usize; 2]> {
            Some([find(&format!("{prefix}_user_embedding"))?, find(&format!("{prefix}_item_embedding"))?])
        };
        let (gmf, mlp, mf) = (pair("gmf"), pair("mlp"), pair("mf"));
        if find("user_features").is_some() || find("item_features").is_some() {
            return Err("a hybrid model (side features in the MLP's input) runs the reference step".into());
        }
        if mf.is_none() && find("user_bias").is_some() {
            return Err("the rating model (per-user and per-item biases beside the MLP) runs the reference step".into());
        }
        let kind = match (gmf, mlp, mf) {
            (Some(_), Some(_), None) => FusedKind::NeuMf,
            (Some(_), None, None) => FusedKind::Gmf,
            (None, Some(_), None) => FusedKind::Mlp,
            (None, None, Some(_)) => FusedKind::Mf,
            _ => return Err("not one of the four NCF models".into()),
        };
        let mut tables: [Vec<usize>; 2] = [Vec::new(), Vec::new()];
        let mut table_width = Vec::new();
        let mut dense = Vec::new();
        let (mut f, mut d, mut widths) = (0, 0, vec![0]);
        let mut add_pair = |p: [usize; 2], tables: &mut [Vec<usize>; 2]| {
            tables[0].push(p[0]);
            tables[1].push(p[1]);
            table_width.push(t(p[0]).row_width());
            t(p[0]).row_width()
        };
        if let Some(p) = gmf {
            f = add_pair(p, &mut tables);
        }
        if let Some(p) = mlp {
            d = add_pair(p, &mut tables);
            widths = vec![2 * d];
            for l in 0.. {
                let (Some(w), Some(b)) = (find(&format!("mlp_{l}_weight")), find(&format!("mlp_{l}_bias"))) else {
                    break;
                };
                if l == MAX_LAYERS {
                    return Err(format!("the fused step takes at most {MAX_LAYERS} dense layers"));
                }
                if t(w).shape != [t(b).numel(), widths[l]] {
                    return Err(format!("mlp_{l}_weight has shape {:?}", t(w).shape));
                }
                widths.push(t(b).numel());
                dense.extend([w, b]);
            }
        }
        if let Some(p) = mf {
            f = add_pair(p, &mut tables);
            let (Some(ub), Some(ib), Some(g)) = (find("user_bias"), find("item_bias"), find("global_bias")) else {
                return Err("MF without its biases".into());
            };
            add_pair([ub, ib], &mut tables);
            dense.push(g);
        } else {
            let (Some(w), Some(b)) = (find("predict_weight"), find("predict_bias")) else {
                return Err("no prediction layer".into());
            };
            dense.extend([w, b]);
        }
        let used = tables[0].len() * 2 + dense.len();
        if used != params.tensors.len() {
            return Err(format!("{} tensors, of which the fused step knows {used}", params.tensors.len()));
        }
        for (side, src) in [(0, IdSource::User), (1, IdSource::Item)] {
            if tables[side].iter().any(|&k| t(k).role != Role::Embedding(src)) {
                return Err("an embedding table indexed by the other side's ids".into());
            }
        }
        let rows = [t(tables[0][0]).rows(), t(tables[1][0]).rows()];
        if table_width.iter().sum::<usize>() > MAX_SIDE {
            return Err(format!("embedding rows wider than {MAX_SIDE} floats per side"));
        }
        let dense_len = dense.iter().map(|&k| t(k).numel()).collect();
        let dense_group = dense.iter().map(|&k| group_index(t(k).role)).collect();
        let m = FusedModel { kind, f, d, widths, tables, table_width, dense, dense_len, dense_group, rows, adam };
        if m.tile().is_none() {
            return Err(format!(
                "{} dense parameters and {MIN_TILE} samples' activations ({} floats each) exceed {SHARED_BYTES} \
                 bytes of shared memory",
                m.nparams(),
                m.region()
            ));
        }
        Ok(m)
    }

    /// Dense layers of the MLP tower.
    pub fn nl(&self) -> usize {
        self.widths.len() - 1
    }

    /// `P`: the dense parameters, concatenated.
    pub fn nparams(&self) -> usize {
        self.dense_len.iter().sum()
    }

    /// Floats of one side's row gradient.
    pub fn side_width(&self) -> usize {
        self.table_width.iter().sum()
    }

    /// Floats of one sample's shared-memory region (see `Region` in the kernel), odd so that
    /// the threads of a warp, reading the same offset of their regions, hit distinct banks.
    pub fn region(&self) -> usize {
        let acts: usize = self.widths.iter().sum();
        let deltas: usize = self.widths[1..].iter().sum();
        (2 * self.side_width() + acts + deltas + 2) | 1
    }

    /// Dynamic shared memory of a tile of `tile` samples.
    pub fn smem(&self, tile: usize) -> usize {
        4 * (self.nparams() + tile * self.region())
    }

    /// Samples per block: the largest power of two from [`MIN_TILE`] to [`MAX_TILE`] whose
    /// shared memory fits [`SHARED_BYTES`].
    pub fn tile(&self) -> Option<usize> {
        (MIN_TILE.trailing_zeros()..=MAX_TILE.trailing_zeros())
            .rev()
            .map(|s| 1 << s)
            .find(|&t| self.smem(t) <= SHARED_BYTES)
    }

    /// Blocks of `fused_tile` for a batch of `b`.
    pub fn blocks(&self, b: usize) -> usize {
        b.div_ceil(self.tile().unwrap_or(1)).max(1)
    }

    /// Floats of the per-block partial sums for batches up to `max_batch`.
    pub fn partials_len(&self, max_batch: usize) -> usize {
        self.blocks(max_batch) * (self.nparams() + 1)
    }

    /// The table the kernels read.
    pub fn tab(&self, bufs: &FusedBufs) -> FusedTab {
        let mut width = [0i64; MAX_LAYERS + 1];
        for (w, &x) in width.iter_mut().zip(&self.widths) {
            *w = x as i64;
        }
        let mut dense_off = [0i64; MAX_DENSE + 1];
        let mut dense_group = [0i64; MAX_DENSE];
        let (mut dense, mut dense_m, mut dense_v) = ([0u64; MAX_DENSE], [0u64; MAX_DENSE], [0u64; MAX_DENSE]);
        for (k, (&len, &g)) in self.dense_len.iter().zip(&self.dense_group).enumerate() {
            dense_off[k + 1] = dense_off[k] + len as i64;
            dense_group[k] = g as i64;
            [dense[k], dense_m[k], dense_v[k]] = bufs.dense[k];
        }
        let mut table_width = [0i64; 2];
        for (w, &x) in table_width.iter_mut().zip(&self.table_width) {
            *w = x as i64;
        }
        let pick = |i: usize| bufs.emb.map(|side| side.map(|t| t[i]));
        let hp = |f: fn(&AdamHp) -> f64| self.adam.each_ref().map(f);
        let hp32 = |f: fn(&AdamHp) -> f64| self.adam.each_ref().map(|h| f(h) as f32);
        FusedTab {
            kind: self.kind as i64,
            f: self.f as i64,
            d: self.d as i64,
            nl: self.nl() as i64,
            width,
            ndense: self.dense.len() as i64,
            nparams: self.nparams() as i64,
            dense_off,
            dense_group,
            ntables: self.table_width.len() as i64,
            table_width,
            side_width: self.side_width() as i64,
            region: self.region() as i64,
            users: bufs.users,
            items: bufs.items,
            labels: bufs.labels,
            emb: pick(0),
            emb_m: pick(1),
            emb_v: pick(2),
            dense,
            dense_m,
            dense_v,
            partials: bufs.partials,
            sample_grad: bufs.sample_grad,
            next: bufs.next,
            last: bufs.last,
            rowinfo: bufs.rowinfo,
            t: bufs.t,
            scalars: bufs.scalars,
            loss: bufs.loss,
            lr: hp(|h| h.lr),
            beta1: hp(|h| h.beta1),
            beta2: hp(|h| h.beta2),
            // As the CPU's AdamScalars and optim.cu: f32 rounded from the f64 values.
            b1: hp32(|h| h.beta1),
            omb1: hp32(|h| 1.0 - h.beta1),
            b2: hp32(|h| h.beta2),
            omb2: hp32(|h| 1.0 - h.beta2),
            eps: hp32(|h| h.eps),
            l2: hp32(|h| h.decay.l2()),
            shrink: hp32(|h| 1.0 - h.lr * h.decay.decoupled()),
            pad: 0.0,
        }
    }

    /// The step on a batch of `b` (1 ≤ b ≤ the buffers' `max_batch`): three launches, whose
    /// grids follow `b` and the dense parameter count only.
    pub fn plan(&self, tab: Addr, b: usize) -> Result<Plan> {
        const OP: &str = "fused_step";
        if b == 0 {
            return Err(Error::invalid(OP, "b", "an empty batch"));
        }
        let tile = self.tile().ok_or_else(|| Error::invalid(OP, "model", "does not fit a tile"))?;
        let (bi, blocks) = (i32_of(OP, "b", b)?, self.blocks(b));
        i32_of(OP, "2·b", 2 * b)?; // fused_rows_adam's threads
        let blocks_i = i32_of(OP, "blocks", blocks)?;
        let cfg1 = ((blocks as u32, 1, 1), (tile as u32, 1, 1), self.smem(tile) as u32);
        let k1 = Launch::new(Kernel::FusedTile, cfg1, &[Arg::Ptr(tab), Arg::I32(bi)]);
        let dense_blocks = (self.nparams() + 1).div_ceil(32) as u32;
        let cfg2 = ((dense_blocks, 1, 1), (32, DENSE_GROUPS, 1), 0);
        let k2 = Launch::new(Kernel::FusedDenseAdam, cfg2, &[Arg::Ptr(tab), Arg::I32(bi), Arg::I32(blocks_i)]);
        let k3 = Launch::new(Kernel::FusedRowsAdam, grid(2 * b), &[Arg::Ptr(tab), Arg::I32(bi)]);
        Ok(Plan::one(k1).then(crate::plan::Step::Kernel(k2)).then(crate::plan::Step::Kernel(k3)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// NeuMF-8 with the paper's tower, as `FusedModel::of` reads it, for tables of `users` ×
    /// `items` rows (built by hand: a 100 M-row table is 3.2 GB per tensor on the host).
    fn neumf(users: usize, items: usize) -> FusedModel {
        FusedModel {
            kind: FusedKind::NeuMf,
            f: 8,
            d: 32,
            widths: vec![64, 32, 16, 8],
            tables: [vec![0, 2], vec![1, 3]],
            table_width: vec![8, 32],
            dense: (4..12).collect(),
            dense_len: vec![32 * 64, 32, 16 * 32, 16, 8 * 16, 8, 16, 1],
            dense_group: vec![1, 2, 1, 2, 1, 2, 1, 2],
            rows: [users, items],
            adam: [AdamHp::default(); 3],
        }
    }

    /// The step's launch plans (kernels, grids, blocks, shared memory, every argument) are the
    /// same for tables of 1,000 and of 100 M rows: the work follows the batch. (The tables'
    /// sizes reach the kernels only as the rows of `last`, which are touched at the batch's
    /// ids.)
    #[test]
    fn plans_do_not_depend_on_the_tables() {
        let (small, huge) = (neumf(1_000, 1_000), neumf(100_000_000, 100_000_000));
        for b in [1, 255, 256, 4096, 1 << 20] {
            let (p, q) = (small.plan(0x1000, b).unwrap(), huge.plan(0x1000, b).unwrap());
            assert_eq!(p, q, "b={b}");
            assert_eq!(p.steps().len(), 3);
            assert_eq!(small.partials_len(b), huge.partials_len(b));
        }
        let k1 = *small.plan(0x1000, 4096).unwrap().launches().next().unwrap();
        let tile = small.tile().unwrap();
        assert_eq!(k1.grid.0 as usize, 4096usize.div_ceil(tile));
        assert!(k1.smem as usize <= SHARED_BYTES, "{k1}");
        println!("NeuMF-8: tile {tile}, {k1}, P = {}, region {} floats", small.nparams(), small.region());
    }

    /// The tile is the largest power of two whose shared memory fits; a model too large for
    /// one sample's region is refused (and then trains with the reference step).
    #[test]
    fn tiles_fit_shared_memory() {
        let m = neumf(10, 10);
        let t = m.tile().unwrap();
        assert!(m.smem(t) <= SHARED_BYTES && (t == MAX_TILE || m.smem(2 * t) > SHARED_BYTES));
        let mut mlperf = m.clone();
        (mlperf.f, mlperf.d, mlperf.widths, mlperf.table_width) = (64, 128, vec![256, 256, 128, 64], vec![64, 128]);
        mlperf.dense_len = vec![256 * 256, 256, 128 * 256, 128, 64 * 128, 64, 128, 1];
        assert_eq!(mlperf.tile(), None, "MLPerf's tower runs the reference step");
        let e = m.plan(0, 0).unwrap_err().to_string();
        assert!(e.contains("empty batch"), "{e}");
    }

    /// The table's words hold the fields where the kernels' struct has them (a few spot
    /// checks of the #[repr(C)] layout; the emulator test checks every field's use).
    #[test]
    fn the_table_is_laid_out_as_the_kernels_read_it() {
        let m = neumf(10, 20);
        let bufs = FusedBufs { users: 0xAAAA, loss: 0xBBBB, dense: vec![[1, 2, 3]; 8], ..FusedBufs::default() };
        let w = m.tab(&bufs).words();
        assert_eq!(w.len() * 8, TAB_BYTES);
        assert_eq!(w[0], FusedKind::NeuMf as u64);
        assert_eq!(&w[4..8], &[64, 32, 16, 8]);
        // users: after 4 + 9 + 2 + 19 + 18 + 1 + 2 + 2 words of shape.
        assert_eq!(w[57], 0xAAAA);
        // loss: the last pointer, before 9 doubles and 11 words of floats.
        assert_eq!(w[w.len() - 22], 0, "t, after rowinfo");
        assert_eq!(w[w.len() - 21], 0xBBBB);
        assert_eq!(f64::from_bits(w[w.len() - 20]), 1e-3);
    }
}
