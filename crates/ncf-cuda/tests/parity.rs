//! Every op of `CudaBackend` against `CpuBackend<f32>` on random inputs, and five NeuMF
//! training steps end to end. Needs a GPU; prints `skipped: no CUDA device (…)` otherwise.
//! Failures print max abs / rel error and the first differing values (`ncf_core::tol`).

use ncf_core::tol::{Tol, assert_close};
use ncf_core::{AdamHp, Backend, SgdHp};
use ncf_cpu::CpuBackend;
use ncf_cuda::{CudaBackend, GpuGemm};

/// GPU vs CPU in f32: different summation orders and fused multiply-adds.
const TOL: Tol = Tol { abs: 1e-5, rel: 1e-4 };

fn gpu(gemm: GpuGemm) -> Option<CudaBackend> {
    match CudaBackend::new(0, gemm) {
        Ok(b) => Some(b),
        Err(e) => {
            println!("skipped: no CUDA device ({e})");
            None
        }
    }
}

fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn rand_ids(n: usize, rows: usize, seed: u64) -> Vec<u32> {
    rand_vec(n, seed).iter().map(|x| (((x + 1.0) * 0.5 * rows as f32) as usize).min(rows - 1) as u32).collect()
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

fn check(name: &str, g: &CudaBackend, got: &<CudaBackend as Backend>::Buf, want: &[f32]) {
    let got = g.download(got).unwrap();
    assert_close(name, &f64s(&got[..want.len()]), &f64s(want), TOL);
}

#[test]
fn every_op_matches_the_cpu() {
    let Some(g) = gpu(GpuGemm::Tiled) else { return };
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
    check("embedding_forward", &g, &got, &want);
    let dout = rand_vec(b * d, 3);
    let gd = g.upload(&dout).unwrap();
    let mut want = rand_vec(n * d, 4);
    let mut got = g.upload(&want).unwrap();
    c.embedding_backward(&dout, &ids, b, d, &mut want, n).unwrap();
    g.embedding_backward(&gd, &gids, b, d, &mut got, n).unwrap();
    check("embedding_backward (sorted)", &g, &got, &want);

    // Dense layer through every GEMM, including o = 1.
    for gemm in [GpuGemm::Naive, GpuGemm::Tiled, GpuGemm::Cublas] {
        let Some(g) = gpu(gemm) else { return };
        for &(b, i, o) in &[(256, 64, 32), (300, 32, 16), (257, 16, 8), (256, 16, 1), (7, 5, 3)] {
            let (inp, w, bias, dout) = (rand_vec(b * i, 5), rand_vec(o * i, 6), rand_vec(o, 7), rand_vec(b * o, 8));
            let mut want = vec![0.0; b * o];
            c.linear_forward(&inp, &w, &bias, &mut want, b, i, o).unwrap();
            let (gi, gw, gb, gdo) =
                (g.upload(&inp).unwrap(), g.upload(&w).unwrap(), g.upload(&bias).unwrap(), g.upload(&dout).unwrap());
            let mut got = g.zeros(b * o).unwrap();
            g.linear_forward(&gi, &gw, &gb, &mut got, b, i, o).unwrap();
            let tag = format!("{gemm:?} b={b} i={i} o={o}");
            check(&format!("linear_forward {tag}"), &g, &got, &want);
            let (mut dinp, mut dw, mut db) = (vec![0.0; b * i], rand_vec(o * i, 9), rand_vec(o, 10));
            let (mut gdinp, mut gdw, mut gdb) =
                (g.zeros(b * i).unwrap(), g.upload(&dw).unwrap(), g.upload(&db).unwrap());
            c.linear_backward(&dout, &inp, &w, Some(&mut dinp), &mut dw, &mut db, b, i, o).unwrap();
            g.linear_backward(&gdo, &gi, &gw, Some(&mut gdinp), &mut gdw, &mut gdb, b, i, o).unwrap();
            check(&format!("dinp {tag}"), &g, &gdinp, &dinp);
            check(&format!("dw {tag}"), &g, &gdw, &dw);
            check(&format!("dbias {tag}"), &g, &gdb, &db);
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
    check("relu_forward", &g, &got, &want);
    c.sigmoid_forward(&x, &mut want, m).unwrap();
    g.sigmoid_forward(&gx, &mut got, m).unwrap();
    check("sigmoid_forward", &g, &got, &want);
    c.gmf_forward(&x, &y, &mut want, m).unwrap();
    g.gmf_forward(&gx, &gy, &mut got, m).unwrap();
    check("gmf_forward", &g, &got, &want);
    let labels: Vec<f32> = y.iter().map(|&v| if v > 0.0 { 1.0 } else { 0.0 }).collect();
    let gl = g.upload(&labels).unwrap();
    let (mut loss, mut gloss) = (vec![0.25f32], g.upload(&[0.25]).unwrap());
    c.bce_with_logits(&x, &labels, m, &mut loss, &mut want).unwrap();
    g.bce_with_logits(&gx, &gl, m, &mut gloss, &mut got).unwrap();
    check("bce dlogits", &g, &got, &want);
    check("bce loss", &g, &gloss, &loss);

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
    check("adam_step × 3", &g, &gp, &p);
    let sgd = SgdHp { lr: 0.1, momentum: 0.9, decay: ncf_core::Decay::None };
    let (mut mom, mut gmom) = (vec![0.0; m], g.zeros(m).unwrap());
    c.sgd_step(&mut p, &mut gr, &mut mom, m, &sgd).unwrap();
    g.sgd_step(&mut gp, &mut ggr, &mut gmom, m, &sgd).unwrap();
    check("sgd_step", &g, &gp, &p);
}

/// Five NeuMF steps (Adam, lazy embeddings) on the GPU and the CPU from the same initial
/// weights: the losses and every parameter agree within the f32 tolerance.
#[test]
fn five_neumf_training_steps_match_the_cpu() {
    use ncf_model::{AnyModel, Batch, Model, ModelConfig, ModelKind, OptimConfig, Optimizer, StepScratch, train_step};
    let Some(g) = gpu(GpuGemm::Tiled) else { return };
    let c = CpuBackend::<f32>::default();
    let cfg = ModelConfig::new(ModelKind::NeuMf, 50, 80);
    let b = 256;
    let mut mc = AnyModel::new(&c, &cfg, b, &mut ncf_core::rng::seeded(7, 1)).unwrap();
    let mut mg = AnyModel::new(&g, &cfg, b, &mut ncf_core::rng::seeded(7, 1)).unwrap();
    let (mut oc, mut og) = (
        Optimizer::new(&c, mc.params(), OptimConfig::adam(0.01), b).unwrap(),
        Optimizer::new(&g, mg.params(), OptimConfig::adam(0.01), b).unwrap(),
    );
    let (mut bc, mut bg) = (Batch::with_capacity(&c, b).unwrap(), Batch::with_capacity(&g, b).unwrap());
    let (mut sc, mut sg) = (StepScratch::new(&c, b).unwrap(), StepScratch::new(&g, b).unwrap());
    for step in 0..5u64 {
        let users = rand_ids(b, 50, 100 + step);
        let items = rand_ids(b, 80, 200 + step);
        let labels: Vec<f32> = (0..b).map(|k| (k % 5 == 0) as u8 as f32).collect();
        bc.set(&c, &users, &items, &labels).unwrap();
        bg.set(&g, &users, &items, &labels).unwrap();
        train_step(&c, &mut mc, &mut oc, &bc, &mut sc).unwrap();
        train_step(&g, &mut mg, &mut og, &bg, &mut sg).unwrap();
        let (lc, lg) = (sc.take_loss(&c).unwrap(), sg.take_loss(&g).unwrap());
        println!("step {step}: loss cpu {lc:.7} gpu {lg:.7}");
        assert_close(&format!("loss step {step}"), &[lg], &[lc], TOL);
    }
    let (pc, pg) = (mc.params().to_host(&c).unwrap(), mg.params().to_host(&g).unwrap());
    for (a, bb) in pc.iter().zip(&pg) {
        assert_close(&format!("{} after 5 steps", a.name), &bb.data, &a.data, Tol { abs: 1e-5, rel: 1e-3 });
    }
}
