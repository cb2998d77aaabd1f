//! Every op of `CudaBackend` against `CpuBackend<f32>` on random inputs, and five NeuMF
//! training steps end to end. Needs a GPU; prints `skipped: no CUDA device (…)` otherwise, or
//! fails under `NCF_REQUIRE_GPU=1` (`ncf_core::testenv::skip`).
//! Failures print max abs / rel error and the first differing values (`ncf_core::tol`).

mod common;

use common::{f64s, rand_ids, rand_vec};
use ncf_core::tol::{Tol, assert_close, assert_same};
use ncf_core::{AdamHp, Backend, SgdHp};
use ncf_cpu::CpuBackend;
use ncf_cuda::{CudaBackend, GpuGemm};

/// GPU vs CPU in f32: different summation orders and fused multiply-adds.
const TOL: Tol = Tol { abs: 1e-5, rel: 1e-4 };

/// The device for one test. Dropped last (it is declared first), it synchronizes after the
/// test's buffers were freed and fails the test if the device reports an error then: a fault
/// of an asynchronous launch, or of a free, is not lost.
struct Gpu(CudaBackend);

impl std::ops::Deref for Gpu {
    type Target = CudaBackend;
    fn deref(&self) -> &CudaBackend {
        &self.0
    }
}

impl Drop for Gpu {
    fn drop(&mut self) {
        if let Err(e) = self.0.synchronize()
            && !std::thread::panicking()
        {
            panic!("after the test's buffers were freed, the device reports: {e}");
        }
    }
}

fn gpu(gemm: GpuGemm) -> Option<Gpu> {
    match CudaBackend::new(0, gemm) {
        Ok(b) => Some(Gpu(b)),
        Err(e) => {
            ncf_core::testenv::skip("NCF_REQUIRE_GPU", &format!("no CUDA device ({e})"));
            None
        }
    }
}

fn check(name: &str, g: &CudaBackend, got: &<CudaBackend as Backend>::Buf, want: &[f32]) {
    let got = g.download(got).unwrap();
    assert_close(name, &f64s(&got[..want.len()]), &f64s(want), TOL);
}

#[test]
fn every_op_matches_the_cpu() {
    let Some(guard) = gpu(GpuGemm::Tiled) else { return };
    let g: &CudaBackend = &guard;
    let c = CpuBackend::<f32>::default();
    let (n, d, b) = (97, 24, 300);
    let table = rand_vec(n * d, 1);
    let ids = rand_ids(b, n, 2);
    let (gt, mut gids) = (g.upload(&table).unwrap(), g.zeros_ids(b).unwrap());
    g.write_ids(&mut gids, &ids).unwrap();

    // Gather, scatter-add (deterministic and atomic), fused gather-add-relu.
    let mut want = vec![0.0; b * d];
    c.embedding_forward(&table, n, d, &ids, b, &mut want).unwrap();
    let mut got = g.zeros(b * d).unwrap();
    g.embedding_forward(&gt, n, d, &gids, b, &mut got).unwrap();
    check("embedding_forward", g, &got, &want);
    let dout = rand_vec(b * d, 3);
    let gd = g.upload(&dout).unwrap();
    let mut want = rand_vec(n * d, 4);
    let mut got = g.upload(&want).unwrap();
    c.embedding_backward(&dout, &ids, b, d, &mut want, n).unwrap();
    g.embedding_backward(&gd, &gids, b, d, &mut got, n).unwrap();
    check("embedding_backward (sorted)", g, &got, &want);

    // Dense layer through every GEMM, including o = 1.
    for gemm in [GpuGemm::Naive, GpuGemm::Tiled, GpuGemm::Cublas] {
        let Some(guard) = gpu(gemm) else { return };
        let g: &CudaBackend = &guard;
        for &(b, i, o) in &[(256, 64, 32), (300, 32, 16), (257, 16, 8), (256, 16, 1), (7, 5, 3)] {
            let (inp, w, bias, dout) = (rand_vec(b * i, 5), rand_vec(o * i, 6), rand_vec(o, 7), rand_vec(b * o, 8));
            let mut want = vec![0.0; b * o];
            c.linear_forward(&inp, &w, &bias, &mut want, b, i, o).unwrap();
            let (gi, gw, gb, gdo) =
                (g.upload(&inp).unwrap(), g.upload(&w).unwrap(), g.upload(&bias).unwrap(), g.upload(&dout).unwrap());
            let mut got = g.zeros(b * o).unwrap();
            g.linear_forward(&gi, &gw, &gb, &mut got, b, i, o).unwrap();
            let tag = format!("{gemm:?} b={b} i={i} o={o}");
            check(&format!("linear_forward {tag}"), g, &got, &want);
            let (mut dinp, mut dw, mut db) = (vec![0.0; b * i], rand_vec(o * i, 9), rand_vec(o, 10));
            let (mut gdinp, mut gdw, mut gdb) =
                (g.zeros(b * i).unwrap(), g.upload(&dw).unwrap(), g.upload(&db).unwrap());
            c.linear_backward(&dout, &inp, &w, Some(&mut dinp), &mut dw, &mut db, b, i, o).unwrap();
            g.linear_backward(&gdo, &gi, &gw, Some(&mut gdinp), &mut gdw, &mut gdb, b, i, o).unwrap();
            check(&format!("dinp {tag}"), g, &gdinp, &dinp);
            check(&format!("dw {tag}"), g, &gdw, &dw);
            check(&format!("dbias {tag}"), g, &gdb, &db);
        }
    }

    // Element-wise ops, loss, optimizers.
    let m = 5000;
    let (x, y) = (rand_vec(m, 11), rand_vec(m, 12));
    let (gx, gy) = (g.upload(&x).unwrap(), g.upload(&y).unwrap());
    let mut want = vec![0.0; m];
    let mut got = g.zeros(m).unwrap();
    c.relu_forward(&x, &mut want, m).unwrap();
    g.relu_forward(&gx, &mut got, m).unwrap();
    check("relu_forward", g, &got, &want);
    c.sigmoid_forward(&x, &mut want, m).unwrap();
    g.sigmoid_forward(&gx, &mut got, m).unwrap();
    check("sigmoid_forward", g, &got, &want);
    c.gmf_forward(&x, &y, &mut want, m).unwrap();
    g.gmf_forward(&gx, &gy, &mut got, m).unwrap();
    check("gmf_forward", g, &got, &want);
    let labels: Vec<f32> = y.iter().map(|&v| if v > 0.0 { 1.0 } else { 0.0 }).collect();
    let gl = g.upload(&labels).unwrap();
    let (mut loss, mut gloss) = (vec![0.25f32], g.upload(&[0.25]).unwrap());
    c.bce_with_logits(&x, &labels, m, &mut loss, &mut want).unwrap();
    g.bce_with_logits(&gx, &gl, m, &mut gloss, &mut got).unwrap();
    check("bce dlogits", g, &got, &want);
    check("bce loss", g, &gloss, &loss);

    let hp = AdamHp::default();
    let (mut p, mut gr, mut m1, mut v1) = (x.clone(), y.clone(), vec![0.0; m], vec![0.0; m]);
    let (mut gp, mut ggr, mut gm, mut gv) =
        (g.upload(&p).unwrap(), g.upload(&gr).unwrap(), g.zeros(m).unwrap(), g.zeros(m).unwrap());
    let (mut ct, mut gt) = (vec![0u32], g.zeros_ids(1).unwrap());
    for _ in 1..=3 {
        c.counter_add(&mut ct, 1).unwrap();
        g.counter_add(&mut gt, 1).unwrap();
        c.adam_step(&mut p, &mut gr, &mut m1, &mut v1, m, &hp, &ct).unwrap();
        g.adam_step(&mut gp, &mut ggr, &mut gm, &mut gv, m, &hp, &gt).unwrap();
        gr.copy_from_slice(&y);
        g.write(&mut ggr, &y).unwrap();
    }
    check("adam_step × 3", g, &gp, &p);
    let sgd = SgdHp { lr: 0.1, momentum: 0.9, decay: ncf_core::Decay::None };
    let (mut mom, mut gmom) = (vec![0.0; m], g.zeros(m).unwrap());
    c.sgd_step(&mut p, &mut gr, &mut mom, m, &sgd).unwrap();
    g.sgd_step(&mut gp, &mut ggr, &mut gmom, m, &sgd).unwrap();
    check("sgd_step", g, &gp, &p);
}

/// Five NeuMF steps (Adam, lazy embeddings) on the GPU and the CPU from the same initial
/// weights: the losses and every parameter agree within the f32 tolerance.
#[test]
fn five_neumf_training_steps_match_the_cpu() {
    use ncf_model::{AnyModel, Batch, Model, ModelConfig, ModelKind, OptimConfig, Optimizer, StepScratch, train_step};
    let Some(guard) = gpu(GpuGemm::Tiled) else { return };
    let g: &CudaBackend = &guard;
    let c = CpuBackend::<f32>::default();
    let cfg = ModelConfig::new(ModelKind::NeuMf, 50, 80);
    let b = 256;
    let mut mc = AnyModel::new(&c, &cfg, b, &mut ncf_core::rng::seeded(7, 1)).unwrap();
    let mut mg = AnyModel::new(g, &cfg, b, &mut ncf_core::rng::seeded(7, 1)).unwrap();
    let (mut oc, mut og) = (
        Optimizer::new(&c, mc.params(), OptimConfig::adam(0.01), b).unwrap(),
        Optimizer::new(g, mg.params(), OptimConfig::adam(0.01), b).unwrap(),
    );
    let (mut bc, mut bg) = (Batch::with_capacity(&c, b).unwrap(), Batch::with_capacity(g, b).unwrap());
    let (mut sc, mut sg) = (StepScratch::new(&c, b).unwrap(), StepScratch::new(g, b).unwrap());
    for step in 0..5u64 {
        let users = rand_ids(b, 50, 100 + step);
        let items = rand_ids(b, 80, 200 + step);
        let labels: Vec<f32> = (0..b).map(|k| (k % 5 == 0) as u8 as f32).collect();
        bc.set(&c, &users, &items, &labels).unwrap();
        bg.set(g, &users, &items, &labels).unwrap();
        train_step(&c, &mut mc, &mut oc, &bc, &mut sc).unwrap();
        train_step(g, &mut mg, &mut og, &bg, &mut sg).unwrap();
        let (lc, lg) = (sc.take_loss(&c).unwrap(), sg.take_loss(g).unwrap());
        println!("step {step}: loss cpu {lc:.7} gpu {lg:.7}");
        assert_close(&format!("loss step {step}"), &[lg], &[lc], TOL);
    }
    let (pc, pg) = (mc.params().to_host(&c).unwrap(), mg.params().to_host(g).unwrap());
    for (a, bb) in pc.iter().zip(&pg) {
        assert_close(&format!("{} after 5 steps", a.name), &bb.data, &a.data, Tol { abs: 1e-5, rel: 1e-3 });
    }
}

/// The fused step (three launches; `ncf_cuda::step::CudaStep`) on the GPU against the
/// reference step on the CPU, for the four models at batches 1, 255, 256 and 4,096: five steps
/// each, then also a recorded step replayed (a CUDA graph), from the same initial weights.
#[test]
fn the_fused_step_matches_the_cpu_reference_step() {
    use ncf_model::{
        AnyModel, AnyStep, Batch, Model, ModelConfig, ModelKind, OptimConfig, Optimizer, StepKind, StepScratch,
        train_step,
    };
    let Some(guard) = gpu(GpuGemm::Tiled) else { return };
    let g: &CudaBackend = &guard;
    let (c, c64) = (CpuBackend::<f32>::default(), CpuBackend::<f64>::default());
    for kind in [ModelKind::Mf, ModelKind::Gmf, ModelKind::Mlp, ModelKind::NeuMf] {
        for b in [1usize, 255, 256, 4096] {
            let cfg = ModelConfig::new(kind, 50, 80);
            let mut mc = AnyModel::new(&c, &cfg, b, &mut ncf_core::rng::seeded(7, 1)).unwrap();
            let mut mg = AnyModel::new(g, &cfg, b, &mut ncf_core::rng::seeded(7, 1)).unwrap();
            let mut m64 = AnyModel::new(&c64, &cfg, b, &mut ncf_core::rng::seeded(7, 1)).unwrap();
            let (mut oc, mut og, mut o64) = (
                Optimizer::new(&c, mc.params(), OptimConfig::adam(0.01), b).unwrap(),
                Optimizer::new(g, mg.params(), OptimConfig::adam(0.01), b).unwrap(),
                Optimizer::new(&c64, m64.params(), OptimConfig::adam(0.01), b).unwrap(),
            );
            let (mut bc, mut bg) = (Batch::with_capacity(&c, b).unwrap(), Batch::with_capacity(g, b).unwrap());
            let (mut sc, mut sg) = (StepScratch::new(&c, b).unwrap(), StepScratch::new(g, b).unwrap());
            let (mut b64, mut s64) = (Batch::with_capacity(&c64, b).unwrap(), StepScratch::new(&c64, b).unwrap());
            let mut fused = AnyStep::new(g, StepKind::Fast, b).unwrap();
            for step in 0..5u64 {
                let users = rand_ids(b, 50, 100 + step);
                let items = rand_ids(b, 80, 200 + step);
                let labels: Vec<f32> = (0..b).map(|k| (k % 5 == 0) as u8 as f32).collect();
                bc.set(&c, &users, &items, &labels).unwrap();
                bg.set(g, &users, &items, &labels).unwrap();
                b64.set(&c64, &users, &items, &labels.iter().map(|&y| y as f64).collect::<Vec<_>>()).unwrap();
                train_step(&c, &mut mc, &mut oc, &bc, &mut sc).unwrap();
                train_step(&c64, &mut m64, &mut o64, &b64, &mut s64).unwrap();
                fused.step(g, &mut mg, &mut og, &bg, &mut sg).unwrap();
                let (lc, lg) = (sc.take_loss(&c).unwrap(), sg.take_loss(g).unwrap());
                assert_close(&format!("{kind:?} b={b}: loss step {step}"), &[lg], &[lc], TOL);
            }
            assert_eq!(fused.name(), "cuda-fused", "{kind:?}");
            let (pc, pg) = (mc.params().to_host(&c).unwrap(), mg.params().to_host(g).unwrap());
            let p64 = m64.params().to_host(&c64).unwrap();
            for ((a, bb), x) in pc.iter().zip(&pg).zip(&p64) {
                // Within the f32 tolerance of the CPU's f32 step, or at least as close to its
                // f64 step (as in tests/fused_step.rs: Adam magnifies the f32 reference's
                // rounding of long sums that nearly cancel).
                let tol = Tol { abs: 1e-5, rel: 1e-3 };
                let cmp = ncf_core::tol::compare(
                    &format!("{kind:?} b={b}: {} after 5 steps", a.name),
                    &bb.data,
                    &a.data,
                    tol,
                );
                let (e_gpu, e_cpu) = (
                    ncf_core::tol::compare("", &bb.data, &x.data, tol).max_abs,
                    ncf_core::tol::compare("", &a.data, &x.data, tol).max_abs,
                );
                assert!(cmp.ok() || e_gpu <= e_cpu, "{cmp}; vs f64: gpu {e_gpu:.3e} cpu {e_cpu:.3e}");
            }
            assert_eq!(og.t, 5);
            // One more step recorded, then replayed: the same as running it.
            let graph = g.capture(&mut || fused.step(g, &mut mg, &mut og, &bg, &mut sg)).unwrap().unwrap();
            og.t -= 1; // recording ran only the host side
            g.replay(&graph).unwrap();
            train_step(&c, &mut mc, &mut oc, &bc, &mut sc).unwrap();
            let (lc, lg) = (sc.take_loss(&c).unwrap(), sg.take_loss(g).unwrap());
            assert_close(&format!("{kind:?} b={b}: replayed step"), &[lg], &[lc], TOL);
            println!("{kind:?} b={b}: fused step matches over 5 steps and a replay");
        }
    }
}

/// The device-side pieces of the training loop: row plans (distinct rows, lazy optimizers with
/// a device count), counters, the fused dense+ReLU layer, and the sampler, which must draw the
/// CPU's batches bit for bit.
#[test]
fn device_loop_ops_match_the_cpu() {
    let Some(guard) = gpu(GpuGemm::Tiled) else { return };
    let g: &CudaBackend = &guard;
    let c = CpuBackend::<f32>::default();
    let (n, d, b) = (300, 16, 1000);
    let ids = rand_ids(b, n, 21);
    let mut gids = g.zeros_ids(b).unwrap();
    g.write_ids(&mut gids, &ids).unwrap();

    // unique_ids: the same rows (the GPU's in order of first appearance, the CPU's ascending);
    // its count stays on the device, and the lazy Adam that reads it updates exactly the CPU's
    // rows.
    let (mut cu, mut gu) = (Vec::new(), g.zeros_ids(b).unwrap());
    c.unique_ids(&ids, b, n, &mut cu).unwrap();
    g.unique_ids(&gids, b, n, &mut gu).unwrap();
    let got = g.download_ids(&gu, cu.len()).unwrap();
    let mut seen = std::collections::HashSet::new();
    let first_order: Vec<u32> = ids.iter().copied().filter(|i| seen.insert(*i)).collect();
    assert_same("unique_ids", &got, &first_order);
    let mut sorted = got.clone();
    sorted.sort_unstable();
    assert_same("unique_ids as a set", &sorted, &cu);
    let (mut ct, mut gt) = (vec![0u32], g.zeros_ids(1).unwrap());
    c.counter_add(&mut ct, 2).unwrap();
    g.counter_add(&mut gt, 2).unwrap();
    assert_same("counter_add", &g.download_ids(&gt, 1).unwrap(), &ct);
    let hp = AdamHp::default();
    let (mut p, mut gr) = (rand_vec(n * d, 22), rand_vec(n * d, 23));
    let (mut m1, mut v1) = (vec![0.0; n * d], vec![0.0; n * d]);
    let (mut gp, mut ggr, mut gm, mut gv) =
        (g.upload(&p).unwrap(), g.upload(&gr).unwrap(), g.zeros(n * d).unwrap(), g.zeros(n * d).unwrap());
    c.adam_step_rows(&mut p, &mut gr, &mut m1, &mut v1, &cu, d, n, &hp, &ct).unwrap();
    g.adam_step_rows(&mut gp, &mut ggr, &mut gm, &mut gv, &gu, d, n, &hp, &gt).unwrap();
    check("adam_step_rows (device count)", g, &gp, &p);
    check("adam_step_rows gradient zeroed on touched rows only", g, &ggr, &gr);

    // The scatter-add over the row plan, twice on the same ids (the cached plan is reused).
    let dout = rand_vec(b * d, 24);
    let gd = g.upload(&dout).unwrap();
    let mut want = rand_vec(n * d, 25);
    let mut got = g.upload(&want).unwrap();
    for _ in 0..2 {
        c.embedding_backward(&dout, &ids, b, d, &mut want, n).unwrap();
        g.embedding_backward(&gd, &gids, b, d, &mut got, n).unwrap();
    }
    let (gv, wv) = (g.download(&got).unwrap(), want.clone());
    assert_same("the deterministic scatter-add (the CPU's naive order, bit for bit)", &gv[..n * d], &wv[..]);

    // Dense layer + ReLU through every GEMM.
    for gemm in [GpuGemm::Naive, GpuGemm::Tiled, GpuGemm::Cublas] {
        let Some(guard) = gpu(gemm) else { return };
        let g: &CudaBackend = &guard;
        let (b, i, o) = (257, 64, 32);
        let (inp, w, bias) = (rand_vec(b * i, 26), rand_vec(o * i, 27), rand_vec(o, 28));
        let (mut z, mut x) = (vec![0.0; b * o], vec![0.0; b * o]);
        c.linear_relu_forward(&inp, &w, &bias, &mut z, &mut x, b, i, o).unwrap();
        let (gi, gw, gb) = (g.upload(&inp).unwrap(), g.upload(&w).unwrap(), g.upload(&bias).unwrap());
        let (mut gz, mut gx) = (g.zeros(b * o).unwrap(), g.zeros(b * o).unwrap());
        g.linear_relu_forward(&gi, &gw, &gb, &mut gz, &mut gx, b, i, o).unwrap();
        check(&format!("linear_relu_forward z {gemm:?}"), g, &gz, &z);
        check(&format!("linear_relu_forward x {gemm:?}"), g, &gx, &x);
        let dx = rand_vec(b * o, 29);
        let (mut dz, mut dinp, mut dw, mut db) =
            (vec![0.0; b * o], vec![0.0; b * i], rand_vec(o * i, 30), rand_vec(o, 31));
        let gdx = g.upload(&dx).unwrap();
        let (mut gdz, mut gdinp, mut gdw, mut gdb) =
            (g.zeros(b * o).unwrap(), g.zeros(b * i).unwrap(), g.upload(&dw).unwrap(), g.upload(&db).unwrap());
        c.linear_relu_backward(&x, &dx, &mut dz, &inp, &w, Some(&mut dinp), &mut dw, &mut db, b, i, o).unwrap();
        g.linear_relu_backward(&gx, &gdx, &mut gdz, &gi, &gw, Some(&mut gdinp), &mut gdw, &mut gdb, b, i, o).unwrap();
        for (name, got, want) in [("dz", &gdz, &dz), ("dinp", &gdinp, &dinp), ("dw", &gdw, &dw), ("dbias", &gdb, &db)] {
            check(&format!("linear_relu_backward {name} {gemm:?}"), g, got, want);
        }
    }

    // The sampler: three batches of an epoch, identical to the CPU's.
    use ncf_core::sample::{EpochKeys, SampleTables};
    let pairs: Vec<(u32, u32)> = (0..5000u32).map(|k| (k % 97, (k * 31 + k / 97) % 400)).collect();
    let ui = ncf_data_like(97, &pairs);
    let ct = SampleTables::upload(&c, (&ui.0, &ui.1), (&ui.0, &ui.1), 400, 4).unwrap();
    let gtab = SampleTables::upload(g, (&ui.0, &ui.1), (&ui.0, &ui.1), 400, 4).unwrap();
    let k = EpochKeys::new(5, 3).words();
    let (mut cs, mut gs) = (vec![0, k[0], k[1], k[2], k[3]], g.zeros_ids(5).unwrap());
    g.write_ids(&mut gs, &cs).unwrap();
    let bs = 1024;
    let (mut cu, mut ci, mut cl) = (vec![0u32; bs], vec![0u32; bs], vec![0f32; bs]);
    let (mut gu, mut gi, mut gl) = (g.zeros_ids(bs).unwrap(), g.zeros_ids(bs).unwrap(), g.zeros(bs).unwrap());
    for step in 0..3 {
        c.sample_batch(&ct, &mut cs, bs, bs, &mut cu, &mut ci, &mut cl).unwrap();
        g.sample_batch(&gtab, &mut gs, bs, bs, &mut gu, &mut gi, &mut gl).unwrap();
        assert_same(&format!("sampled users, batch {step}"), &g.download_ids(&gu, bs).unwrap(), &cu);
        assert_same(&format!("sampled items, batch {step}"), &g.download_ids(&gi, bs).unwrap(), &ci);
        assert_same(&format!("sampled labels, batch {step}"), &g.download(&gl).unwrap()[..bs], &cl[..]);
    }
    assert_eq!(g.download_ids(&gs, 1).unwrap(), vec![3], "the batch counter advanced on the device");
}

/// Sorted, deduplicated CSR `(offsets, items)` of `pairs` (what `ncf_data::UserItems` holds).
fn ncf_data_like(users: usize, pairs: &[(u32, u32)]) -> (Vec<usize>, Vec<u32>) {
    let mut per: Vec<Vec<u32>> = vec![Vec::new(); users];
    for &(u, i) in pairs {
        per[u as usize].push(i);
    }
    let (mut off, mut items) = (vec![0usize], Vec::new());
    for mut v in per {
        v.sort_unstable();
        v.dedup();
        items.extend(v);
        off.push(items.len());
    }
    (off, items)
}

/// One NeuMF step recorded as a CUDA graph and replayed gives the same bits as issuing the
/// same steps op by op (the sampler, plans, counters and loss all live on the device).
#[test]
fn a_replayed_graph_step_equals_eager_steps() {
    use ncf_core::sample::{EpochKeys, SampleTables};
    use ncf_model::{AnyModel, Batch, Model, ModelConfig, ModelKind, OptimConfig, Optimizer, StepScratch, train_step};
    let Some(guard) = gpu(GpuGemm::Tiled) else { return };
    let g: &CudaBackend = &guard;
    let cfg = ModelConfig::new(ModelKind::NeuMf, 97, 400);
    let pairs: Vec<(u32, u32)> = (0..5000u32).map(|k| (k % 97, (k * 31 + k / 97) % 400)).collect();
    let ui = ncf_data_like(97, &pairs);
    let tables = SampleTables::upload(g, (&ui.0, &ui.1), (&ui.0, &ui.1), 400, 4).unwrap();
    let b = 256;
    let run = |graph: bool| {
        let mut model = AnyModel::new(g, &cfg, b, &mut ncf_core::rng::seeded(7, 1)).unwrap();
        let mut opt = Optimizer::new(g, model.params(), OptimConfig::adam(0.01), b).unwrap();
        let mut batch = Batch::with_capacity(g, b).unwrap();
        let mut scratch = StepScratch::new(g, b).unwrap();
        let mut state = g.zeros_ids(5).unwrap();
        let k = EpochKeys::new(1, 1).words();
        g.write_ids(&mut state, &[0, k[0], k[1], k[2], k[3]]).unwrap();
        let mut step = |model: &mut AnyModel<CudaBackend>, opt: &mut Optimizer<CudaBackend>| {
            g.sample_batch(&tables, &mut state, b, b, &mut batch.users, &mut batch.items, &mut batch.labels)?;
            batch.len = b;
            train_step(g, model, opt, &batch, &mut scratch)
        };
        step(&mut model, &mut opt).unwrap();
        if graph {
            let t = opt.t;
            let rec = g.capture(&mut || step(&mut model, &mut opt)).unwrap().expect("CUDA records graphs");
            for _ in 0..4 {
                g.replay(&rec).unwrap();
            }
            opt.set_steps(g, t + 4).unwrap();
        } else {
            for _ in 0..4 {
                step(&mut model, &mut opt).unwrap();
            }
        }
        let loss = scratch.take_loss(g).unwrap();
        (loss, model.params().to_host(g).unwrap())
    };
    let (le, pe) = run(false);
    let (lg, pg) = run(true);
    println!("5 steps: loss eager {le:.7}, graph {lg:.7}");
    assert_eq!(le, lg, "the loss accumulated over 5 steps");
    for (a, bb) in pe.iter().zip(&pg) {
        assert_same(&format!("{} after 5 steps, eager vs graph", a.name), &a.data, &bb.data);
    }
}

/// Full-ranking ranks and top-K lists on the device equal the CPU's, exactly (integer results;
/// the scores are the same floats on both sides).
#[test]
fn ranks_and_top_k_match_the_cpu() {
    let Some(guard) = gpu(GpuGemm::Tiled) else { return };
    let g: &CudaBackend = &guard;
    let c = CpuBackend::<f32>::default();
    let (u, n, k) = (50usize, 3706usize, 10usize);
    // Rounded scores, so ties are common.
    let scores: Vec<f32> = rand_vec(u * n, 31).iter().map(|x| (x * 20.0).round() / 20.0).collect();
    let targets = rand_ids(u, n, 32);
    let mut seen_off = vec![0u32];
    let mut seen = Vec::new();
    for (cu, &t) in targets.iter().enumerate() {
        let mut s: Vec<u32> = rand_ids(200, n, 100 + cu as u64).into_iter().filter(|&j| j != t).collect();
        s.sort_unstable();
        s.dedup();
        seen.extend(s);
        seen_off.push(seen.len() as u32);
    }
    let ids = |v: &[u32]| {
        let mut d = g.zeros_ids(v.len()).unwrap();
        g.write_ids(&mut d, v).unwrap();
        d
    };
    let (gs, gt, goff, gseen) = (g.upload(&scores).unwrap(), ids(&targets), ids(&seen_off), ids(&seen));
    let (mut cr, mut gr) = (vec![0u32; u], g.zeros_ids(u).unwrap());
    c.rank_unseen(&scores, u, n, &targets, &seen_off, &seen, &mut cr).unwrap();
    g.rank_unseen(&gs, u, n, &gt, &goff, &gseen, &mut gr).unwrap();
    assert_same("full-ranking ranks", &g.download_ids(&gr, u).unwrap(), &cr);
    let (mut ct, mut gk) = (vec![0u32; u * k], g.zeros_ids(u * k).unwrap());
    c.top_k(&scores, u, n, k, &seen_off, &seen, &mut ct).unwrap();
    g.top_k(&gs, u, n, k, &goff, &gseen, &mut gk).unwrap();
    assert_same(&format!("top-{k} lists"), &g.download_ids(&gk, u * k).unwrap(), &ct);
}
