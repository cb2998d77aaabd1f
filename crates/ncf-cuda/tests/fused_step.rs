//! The fused training step (`kernels/fused.cu`, three launches) against the reference step
//! (`ncf_model::train_step` on `CpuBackend<f32>`), on the CUDA emulator: the plans and the
//! table of `ncf_cuda::fused`, built here with host addresses, run on host copies of the same
//! initial parameters and the same batches. For MF, GMF, MLP and NeuMF at batches 1, 255, 256
//! and 4,096, three steps each; the loss of every step and every parameter and Adam moment
//! afterwards must match within the GPU parity tolerance (`tests/parity.rs`), or else be at
//! least as close to the same reference step run in f64 as the f32 reference step is (Adam
//! divides by the gradient's own size, so where a gradient is a sum of thousands of terms
//! that nearly cancel, the f32 reference's rounding grows past 1e-3 in three steps: MLP at
//! batch 4,096, where the fused step's fixed-point row sums and per-tile partial sums are
//! 1e-7 from f64 and the reference 7e-5; the test prints each such tensor). Small tables
//! (37 users, 23 items) make every row repeat many times in the larger batches.
//!
//! Determinism: every case runs with the emulator's threads and blocks in forward, reverse and
//! shuffled order, which changes the order of the atomics that link samples into their rows'
//! lists; the results must be the same bits in all three.
//!
//! `cargo test --release -p ncf-cuda --test fused_step -- --nocapture`

mod common;
mod emu;
use common::{rand_ids, rand_vec};

use emu::{Emu, Order, arg};
use ncf_core::Backend;
use ncf_core::tol::{Tol, compare};
use ncf_cpu::CpuBackend;
use ncf_cuda::fused::{EMPTY, FusedBufs, FusedKind, FusedModel};
use ncf_cuda::kernels::{SOURCES, kernel_names, unit};
use ncf_model::{AnyModel, Batch, Model, ModelConfig, ModelKind, OptimConfig, Optimizer, StepScratch, train_step};

const USERS: usize = 37;
const ITEMS: usize = 23;
const STEPS: u64 = 3;
/// The GPU parity tests' tolerances: the loss of a step, parameters after several steps.
const LOSS_TOL: Tol = Tol { abs: 1e-5, rel: 1e-4 };
const PARAM_TOL: Tol = Tol { abs: 1e-5, rel: 1e-3 };

/// Adam's moments are tiny (`m` ~ the gradients, `v` ~ their squares) and Adam's update does
/// not change when a gradient is scaled, so a wrong gradient shows in the moments, not the
/// weights: they are compared relative to the tensor's largest value (a gradient off by 0.1%
/// fails), not with the weights' absolute floor.
fn tol_for(name: &str, want: &[f64]) -> Tol {
    if name.ends_with(".m") || name.ends_with(".v") {
        let scale = want.iter().fold(0.0f64, |a, &x| a.max(x.abs()));
        Tol { abs: 1e-4 * scale, rel: 1e-3 }
    } else {
        PARAM_TOL
    }
}

fn ad<T>(v: &[T]) -> u64 {
    v.as_ptr() as u64
}

fn config(kind: ModelKind) -> ModelConfig {
    let mut cfg = ModelConfig::new(kind, USERS, ITEMS);
    cfg.factors = 8;
    cfg.layers = vec![16, 12, 8, 4];
    cfg
}

fn batch(b: usize, step: u64) -> (Vec<u32>, Vec<u32>, Vec<f32>) {
    let users = rand_ids(b, USERS, 11 + 3 * step);
    let items = rand_ids(b, ITEMS, 12 + 3 * step);
    let labels = rand_vec(b, 13 + 3 * step).iter().map(|&x| if x > 0.3 { 1.0 } else { 0.0 }).collect();
    (users, items, labels)
}

/// What a run leaves: the loss of each step, then every tensor (parameters, then Adam's m and
/// v) by name.
struct Outcome {
    losses: Vec<f64>,
    tensors: Vec<(String, Vec<f64>)>,
}

/// The reference: `train_step` on the CPU, in `T`, from the f32 model's initial values.
fn reference<T: ncf_core::Float>(kind: ModelKind, b: usize) -> (Outcome, Vec<Vec<f32>>, FusedModel)
where
    CpuBackend<T>: Backend<T = T>,
{
    let (cpu32, cpu) = (CpuBackend::<f32>::default(), CpuBackend::<T>::default());
    let cfg = config(kind);
    let m32 = AnyModel::new(&cpu32, &cfg, b, &mut ncf_core::rng::seeded(5, 1)).unwrap();
    let init: Vec<Vec<f32>> = m32.params().tensors.iter().map(|t| cpu32.download(&t.buf).unwrap()).collect();
    let mut model = AnyModel::new(&cpu, &cfg, b, &mut ncf_core::rng::seeded(5, 1)).unwrap();
    let (params, _) = model.params_and_grads();
    for (t, v) in m32.params().tensors.iter().zip(&init) {
        params.load(&cpu, &t.name, &v.iter().map(|&x| x as f64).collect::<Vec<_>>()).unwrap();
    }
    let mut opt = Optimizer::new(&cpu, model.params(), OptimConfig::adam(0.01), b).unwrap();
    let fm = FusedModel::of(m32.params(), &opt.cfg).unwrap_or_else(|why| panic!("{kind:?}: {why}"));
    let mut bt = Batch::with_capacity(&cpu, b).unwrap();
    let mut sc = StepScratch::new(&cpu, b).unwrap();
    let mut losses = Vec::new();
    for step in 0..STEPS {
        let (u, i, y) = batch(b, step);
        let y: Vec<T> = y.iter().map(|&x| T::from_f64(x as f64)).collect();
        bt.set(&cpu, &u, &i, &y).unwrap();
        train_step(&cpu, &mut model, &mut opt, &bt, &mut sc).unwrap();
        losses.push(sc.take_loss(&cpu).unwrap());
    }
    let mut tensors: Vec<(String, Vec<f64>)> =
        model.params().to_host(&cpu).unwrap().into_iter().map(|h| (h.name, h.data)).collect();
    for h in opt.state_to_host(&cpu, model.params()).unwrap() {
        tensors.push((h.name, h.data));
    }
    (Outcome { losses, tensors }, init, fm)
}

/// A buffer the kernels reach through the table, where the emulator's guard pages do not
/// reach: `PAD` canary elements (a NaN pattern for floats) on both sides of the data. A write
/// out of bounds shows as a changed canary, a float read out of bounds as a NaN in the results.
struct Padded<T> {
    all: Vec<T>,
    len: usize,
}

const PAD: usize = 64;

trait Canary: Copy {
    const CANARY: Self;
    fn same(self, other: Self) -> bool;
}
impl Canary for f32 {
    const CANARY: f32 = f32::from_bits(0x7fa5_a5a5);
    fn same(self, other: f32) -> bool {
        self.to_bits() == other.to_bits()
    }
}
impl Canary for u32 {
    const CANARY: u32 = 0xa5a5_a5a5;
    fn same(self, other: u32) -> bool {
        self == other
    }
}

impl<T: Canary> Padded<T> {
    fn new(data: &[T]) -> Self {
        let mut all = vec![T::CANARY; data.len() + 2 * PAD];
        all[PAD..PAD + data.len()].copy_from_slice(data);
        Padded { all, len: data.len() }
    }
    fn filled(len: usize, value: T) -> Self {
        Self::new(&vec![value; len])
    }
    /// The data's address, as a pointer that may write.
    fn addr(&mut self) -> u64 {
        self.all[PAD..].as_mut_ptr() as u64
    }
    fn get(&self) -> &[T] {
        &self.all[PAD..PAD + self.len]
    }
    fn get_mut(&mut self) -> &mut [T] {
        &mut self.all[PAD..PAD + self.len]
    }
    fn check(&self, name: &str) {
        let (head, tail) = (&self.all[..PAD], &self.all[PAD + self.len..]);
        let bad = head.iter().chain(tail).filter(|x| !x.same(T::CANARY)).count();
        assert_eq!(bad, 0, "{name}: {bad} elements written outside the buffer");
    }
}

/// The fused step on the emulator, from the same initial parameters.
fn fused(emu: &Emu, fm: &FusedModel, init: &[Vec<f32>], names: &[String], b: usize) -> Outcome {
    // Every buffer the kernels reach through the table: allocated once, never moved.
    let mut params: Vec<Padded<f32>> = init.iter().map(|t| Padded::new(t)).collect();
    let mut m: Vec<Padded<f32>> = init.iter().map(|t| Padded::filled(t.len(), 0.0)).collect();
    let mut v: Vec<Padded<f32>> = init.iter().map(|t| Padded::filled(t.len(), 0.0)).collect();
    let (mut users, mut items, mut labels) =
        (Padded::filled(b, 0u32), Padded::filled(b, 0u32), Padded::filled(b, 0f32));
    let mut partials = Padded::filled(fm.partials_len(b), f32::NAN);
    let mut sample_grad =
        [Padded::filled(b * fm.side_width(), f32::NAN), Padded::filled(b * fm.side_width(), f32::NAN)];
    let mut next = [Padded::filled(b, 0u32), Padded::filled(b, 0u32)];
    let mut last = [Padded::filled(fm.rows[0], EMPTY), Padded::filled(fm.rows[1], EMPTY)];
    let mut rowinfo = [Padded::filled(2 * fm.rows[0], 0u32), Padded::filled(2 * fm.rows[1], 0u32)];
    let (mut t, mut scalars, mut loss) =
        (Padded::filled(1, 0u32), Padded::filled(6, f32::NAN), Padded::filled(1, 0f32));
    let mut three = |k: usize| [params[k].addr(), m[k].addr(), v[k].addr()];
    let mut emb = [[[0u64; 3]; 2]; 2];
    for (side, tables) in fm.tables.iter().enumerate() {
        for (j, &k) in tables.iter().enumerate() {
            emb[side][j] = three(k);
        }
    }
    let dense = fm.dense.iter().map(|&k| three(k)).collect();
    let bufs = FusedBufs {
        users: users.addr(),
        items: items.addr(),
        labels: labels.addr(),
        emb,
        dense,
        partials: partials.addr(),
        sample_grad: [sample_grad[0].addr(), sample_grad[1].addr()],
        next: [next[0].addr(), next[1].addr()],
        last: [last[0].addr(), last[1].addr()],
        rowinfo: [rowinfo[0].addr(), rowinfo[1].addr()],
        t: t.addr(),
        scalars: scalars.addr(),
        loss: loss.addr(),
    };
    let tab = fm.tab(&bufs).words();
    let plan = fm.plan(ad(&tab), b).unwrap();
    assert_eq!(plan.steps().len(), 3, "the fused step is three launches");
    let mut losses = Vec::new();
    for step in 0..STEPS {
        let (u, i, y) = batch(b, step);
        users.get_mut().copy_from_slice(&u);
        items.get_mut().copy_from_slice(&i);
        labels.get_mut().copy_from_slice(&y);
        // Every address in `tab` is one of the buffers above, which stay alive and unmoved
        // until the end of this function and are sized as FusedModel asks, taken as pointers
        // that may write. The emulator runs the launches on this thread, one at a time, and
        // returns when they are done.
        emu.run_plan(&plan, &[arg(&tab)]).unwrap_or_else(|e| panic!("{e}"));
        losses.push(loss.get()[0] as f64);
        // The step leaves every list head empty and every row's info zero again.
        for (side, (heads, info)) in last.iter().zip(&rowinfo).enumerate() {
            let bad =
                heads.get().iter().filter(|&&x| x != EMPTY).count() + info.get().iter().filter(|&&x| x != 0).count();
            assert_eq!(bad, 0, "side {side}: {bad} list heads or row infos left set after step {step}");
        }
        loss.get_mut()[0] = 0.0; // StepScratch::take_loss: read, then reset.
    }
    assert_eq!(t.get()[0], STEPS as u32, "Adam's step count");
    for (k, name) in names.iter().enumerate() {
        params[k].check(name);
        m[k].check(&format!("{name}.m"));
        v[k].check(&format!("{name}.v"));
    }
    for (what, p) in [("partials", &partials), ("scalars", &scalars), ("loss", &loss), ("labels", &labels)] {
        p.check(what);
    }
    for side in 0..2 {
        sample_grad[side].check("sample_grad");
        for (what, p) in [("next", &next[side]), ("last", &last[side]), ("rowinfo", &rowinfo[side])] {
            p.check(what);
        }
    }
    for (what, p) in [("users", &users), ("items", &items), ("t", &t)] {
        p.check(what);
    }
    let f64s = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<f64>>();
    let mut tensors: Vec<(String, Vec<f64>)> =
        names.iter().cloned().zip(params.iter().map(|p| f64s(p.get()))).collect();
    for (k, name) in names.iter().enumerate() {
        tensors.push((format!("{name}.m"), f64s(m[k].get())));
        tensors.push((format!("{name}.v"), f64s(v[k].get())));
    }
    let scalars = scalars.get();
    assert!(scalars.iter().all(|x| x.is_finite()), "bias corrections {scalars:?}");
    Outcome { losses, tensors }
}

#[test]
fn the_fused_step_matches_the_reference_step() {
    let Some(cxx) = emu::compiler() else {
        println!("skipped: no C++ compiler (g++)");
        return;
    };
    let src = SOURCES.iter().find(|(f, _)| *f == "fused.cu").expect("fused.cu").1;
    let emu = Emu::build(&cxx, &[("fused.cu", unit(src), kernel_names(src))]).unwrap_or_else(|e| panic!("{e}"));
    emu.set_timeout_ms(120_000);
    let mut failures = Vec::new();
    for kind in [ModelKind::Mf, ModelKind::Gmf, ModelKind::Mlp, ModelKind::NeuMf] {
        for b in [1, 255, 256, 4096] {
            let (want, init, fm) = reference::<f32>(kind, b);
            let (exact, _, _) = reference::<f64>(kind, b);
            let names: Vec<String> = want.tensors.iter().take(init.len()).map(|(n, _)| n.clone()).collect();
            let mut first: Option<Outcome> = None;
            for order in [Order::Forward, Order::Reverse, Order::Shuffled] {
                emu.set_order(order);
                let t0 = std::time::Instant::now();
                let got = fused(&emu, &fm, &init, &names, b);
                let case = format!("{kind:?} b={b} ({order:?} order)");
                let mut worst = (0.0f64, String::new());
                let mut closer = Vec::new();
                let c = compare(&format!("{case}: losses"), &got.losses, &want.losses, LOSS_TOL);
                if !c.ok() {
                    failures.push(c.to_string());
                }
                for (g, w) in got.tensors.iter().zip(&want.tensors) {
                    // Adam's moments are stored as the reference names them (`NAME.m`).
                    let w = want.tensors.iter().find(|(n, _)| *n == g.0).unwrap_or(w);
                    let c = compare(&format!("{case}: {}", g.0), &g.1, &w.1, tol_for(&g.0, &w.1));
                    if !c.ok() {
                        let x = exact.tensors.iter().find(|(n, _)| *n == g.0).expect("same names");
                        let e_fused = compare("", &g.1, &x.1, PARAM_TOL).max_abs;
                        let e_ref = compare("", &w.1, &x.1, PARAM_TOL).max_abs;
                        if e_fused <= e_ref {
                            closer.push(format!("{}: {e_fused:.2e} vs {e_ref:.2e}", g.0));
                        } else {
                            failures.push(format!("{c}; vs f64: fused {e_fused:.3e} reference {e_ref:.3e}"));
                        }
                    }
                    if c.max_abs > worst.0 {
                        worst = (c.max_abs, g.0.clone());
                    }
                }
                println!(
                    "{case}: losses {:?} (reference {:?}); worst max_abs {:.2e} ({}); {:.1?}",
                    got.losses,
                    want.losses,
                    worst.0,
                    worst.1,
                    t0.elapsed()
                );
                if !closer.is_empty() {
                    println!(
                        "  outside the f32 tolerance but closer to the f64 reference than the f32 reference is (max abs error, fused vs reference): {}",
                        closer.join("; ")
                    );
                }
                match &first {
                    None => first = Some(got),
                    Some(f) => {
                        let same = f.losses == got.losses
                            && f.tensors
                                .iter()
                                .zip(&got.tensors)
                                .all(|(a, c)| a.1.iter().zip(&c.1).all(|(x, y)| x.to_bits() == y.to_bits()));
                        if !same {
                            failures.push(format!("{case}: not the same bits as in forward order"));
                        }
                    }
                }
            }
            assert_eq!(fm.kind as u8, fused_kind(kind) as u8);
        }
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
    // A tower too large for shared memory beside a 32-sample tile is refused, with why (the
    // GPU then runs the reference step).
    let cpu = CpuBackend::<f32>::default();
    let mut cfg = config(ModelKind::NeuMf);
    cfg.layers = vec![256, 256, 128, 64];
    let model = AnyModel::new(&cpu, &cfg, 1, &mut ncf_core::rng::seeded(5, 1)).unwrap();
    let why = FusedModel::of(model.params(), &OptimConfig::adam(0.01)).unwrap_err();
    assert!(why.contains("107") && why.contains("exceed 49152 bytes of shared memory"), "{why}");
    // The rating model's bias tables are not in the fused step: it says so, and the trainer
    // runs the reference step.
    let model = AnyModel::new(&cpu, &config(ModelKind::Rating), 1, &mut ncf_core::rng::seeded(5, 1)).unwrap();
    let why = FusedModel::of(model.params(), &OptimConfig::adam(0.01)).unwrap_err();
    assert!(why.contains("rating model"), "{why}");
}

fn fused_kind(kind: ModelKind) -> FusedKind {
    match kind {
        ModelKind::Mf => FusedKind::Mf,
        ModelKind::Gmf => FusedKind::Gmf,
        ModelKind::Mlp => FusedKind::Mlp,
        ModelKind::NeuMf => FusedKind::NeuMf,
        ModelKind::Rating => panic!("the rating model has no fused step"),
    }
}
