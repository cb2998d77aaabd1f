//! The CUDA backend's argument checks give the same [`Error`] as the CPU backend's for the same
//! bad call. `CudaBackend` cannot be built without a GPU, but each of its ops is
//! `ops::<op>(lengths and addresses) -> Result<Plan>` (the shared checks of
//! `ncf_core::check`, then the launch plan), which runs here on made-up addresses with the
//! lengths the device buffers would have. The cases are those of `ncf_core::check::bad_calls`
//! (which needs a constructed backend) plus a few more: short buffers, ids outside their table,
//! sizes whose product overflows, an empty batch, a zero Adam step, device-made ids.
use ncf_core::{AdamHp, Backend, Error, SgdHp};
use ncf_cpu::CpuBackend;
use ncf_cuda::ops::{self, IdMem, Mem};
use ncf_cuda::plan::{GpuGemm, Loss};

/// A device buffer of `len` floats at a made-up address.
fn m(len: usize) -> Mem {
    Mem { addr: 0x10_000 + len as u64 * 64, len }
}

/// Host-written ids at a made-up address.
fn ids(v: &[u32]) -> IdMem<'_> {
    IdMem::host(0x20_000 + v.len() as u64 * 64, v)
}

fn z(n: usize) -> Vec<f32> {
    vec![0.0; n]
}

/// `(what, cpu, cuda)` for each bad call; every pair must be the same error.
#[test]
fn the_cuda_ops_reject_bad_calls_with_the_cpu_backends_errors() {
    let cpu = CpuBackend::<f32>::default();
    let big = usize::MAX / 2 + 1;
    let g = GpuGemm::Tiled;
    let mut cases: Vec<(&str, ncf_core::Result<()>, ncf_core::Result<()>)> = Vec::new();
    macro_rules! case {
        ($what:expr, $cpu:expr, $cuda:expr $(,)?) => {
            cases.push(($what, $cpu, $cuda.map(|_| ())))
        };
    }

    let (inp, w5, bias) = (z(12), z(5), z(2));
    let mut o = z(8);
    case!(
        "linear_forward: short w",
        cpu.linear_forward(&inp, &w5, &bias, &mut o, 4, 3, 2),
        ops::linear_forward(g, m(12), m(5), m(2), m(8), 4, 3, 2),
    );
    case!(
        "linear_forward: b*i overflows",
        cpu.linear_forward(&inp, &w5, &bias, &mut o, big, 4, 2),
        ops::linear_forward(g, m(12), m(5), m(2), m(8), big, 4, 2),
    );
    let (dout, w6) = (z(8), z(6));
    let (mut dw, mut db, mut dinp) = (z(3), z(2), z(1));
    case!(
        "linear_backward: short dw",
        cpu.linear_backward(&dout, &inp, &w6, Some(&mut dinp), &mut dw, &mut db, 4, 3, 2),
        ops::linear_backward(g, m(8), m(12), m(6), Some(m(1)), m(3), m(2), 4, 3, 2),
    );
    let (mut zz, mut xx) = (z(7), z(8));
    case!(
        "linear_relu_forward: short z",
        cpu.linear_relu_forward(&inp, &w6, &bias, &mut zz, &mut xx, 4, 3, 2),
        ops::linear_relu_forward(GpuGemm::Cublas, m(12), m(6), m(2), m(7), m(8), 4, 3, 2),
    );
    let (mut dz, mut dw6) = (z(8), z(6));
    case!(
        "linear_relu_backward: short dbias",
        cpu.linear_relu_backward(&dout, &dout, &mut dz, &inp, &w6, None, &mut dw6, &mut z(1), 4, 3, 2),
        ops::linear_relu_backward(g, m(8), m(8), m(8), m(12), m(6), None, m(6), m(1), 4, 3, 2),
    );

    let (xin, mut xo) = (z(10), z(10));
    case!("dropout: p = 1", cpu.dropout(&xin, &mut xo, 10, 1.0, 7), ops::dropout(m(10), m(10), 10, 1.0, 7));
    case!("dropout: short out", cpu.dropout(&xin, &mut z(9), 10, 0.5, 7), ops::dropout(m(10), m(9), 10, 0.5, 7));
    let (gm, bt) = (z(5), z(5));
    let (mut y, mut xh, mut inv, mut rm, mut rv) = (z(10), z(10), z(5), z(5), z(4));
    case!(
        "batchnorm_forward_train: short rvar",
        cpu.batchnorm_forward_train(&xin, &gm, &bt, 2, 5, 1e-5, 0.1, &mut y, &mut xh, &mut inv, (&mut rm, &mut rv)),
        ops::batchnorm_forward_train((m(10), m(5), m(5)), (m(10), m(10), m(5)), (m(5), m(4)), 2, 5, 1e-5, 0.1),
    );
    case!(
        "batchnorm_forward_eval: eps 0",
        cpu.batchnorm_forward_eval(&xin, &gm, &bt, &gm, &gm, 2, 5, 0.0, &mut y),
        ops::batchnorm_forward_eval((m(10), m(5), m(5)), (m(5), m(5)), m(10), 2, 5, 0.0),
    );
    let (mut dgm, mut dbt) = (z(5), z(5));
    case!(
        "batchnorm_backward: empty batch",
        cpu.batchnorm_backward(&xin, &xin, &gm, &gm, 0, 5, &mut y, &mut dgm, &mut dbt),
        ops::batchnorm_backward((m(10), m(10), m(5), m(5)), (m(10), m(5), m(5)), 0, 5),
    );

    let table = z(40);
    let bad = [1u32, 10, 2];
    let mut eo = z(12);
    case!(
        "embedding_forward: id 10 of 10 rows",
        cpu.embedding_forward(&table, 10, 4, &bad.to_vec(), 3, &mut eo),
        ops::embedding_forward(m(40), 10, 4, ids(&bad), 3, m(12)),
    );
    case!(
        "embedding_forward: 3 ids for b = 4",
        cpu.embedding_forward(&table, 10, 4, &bad.to_vec(), 4, &mut eo),
        ops::embedding_forward(m(40), 10, 4, ids(&bad), 4, m(12)),
    );
    let mut dt = z(40);
    case!(
        "embedding_backward: n*d overflows",
        cpu.embedding_backward(&eo, &bad.to_vec(), 3, 4, &mut dt, big),
        ops::embedding_backward(m(12), ids(&bad), (3, 4), m(40), big, true),
    );
    case!(
        "embedding_backward: id out of range (atomic path)",
        cpu.embedding_backward(&eo, &bad.to_vec(), 3, 4, &mut dt, 10),
        ops::embedding_backward(m(12), ids(&bad), (3, 4), m(40), 10, false),
    );
    let good = [0u32, 1, 2];
    case!(
        "gather_add_relu: ic outside c",
        cpu.gather_add_relu(&table, 10, &good.to_vec(), &table, 2, &good.to_vec(), 4, 3, &mut eo),
        ops::gather_add_relu(m(40), 10, ids(&good), m(40), 2, ids(&good), 4, 3, m(12)),
    );
    let mut co = z(8);
    case!(
        "concat_cols: da + dc overflows",
        cpu.concat_cols(&inp, big, &inp, big, 0, &mut co),
        ops::concat_cols(m(12), big, m(12), big, 0, m(8)),
    );
    let (l4, t2) = (z(4), z(2));
    let (mut loss, mut dl) = (z(1), z(4));
    let partials = (0x30_000, 0x31_000);
    case!(
        "bce_with_logits: b = 0",
        cpu.bce_with_logits(&l4, &l4, 0, &mut loss, &mut dl),
        ops::mean_loss(Loss::BceWithLogits, (m(4), m(4)), 0, (m(1), m(4)), partials),
    );
    case!(
        "mse: short target",
        cpu.mse(&l4, &t2, 4, &mut loss, &mut dl),
        ops::mean_loss(Loss::Mse, (m(4), m(2)), 4, (m(1), m(4)), partials),
    );
    let (mut du, mut dv) = (z(4), z(3));
    case!(
        "gmf_backward: short dv",
        cpu.gmf_backward(&l4, &l4, &l4, &mut du, &mut dv, 4),
        ops::gmf_backward(m(4), m(4), m(4), m(4), m(3), 4),
    );
    let (mut p, mut gr, mut mm, mut v6, mut v8) = (z(8), z(8), z(8), z(6), z(8));
    let (rows, far, t1, t0) = ([0u32, 1], [0u32, 5], [1u32], [0u32]);
    let hp = AdamHp::default();
    case!(
        "adam_step_rows: short v",
        cpu.adam_step_rows(&mut p, &mut gr, &mut mm, &mut v6, &rows.to_vec(), 4, 2, &hp, &t1.to_vec()),
        ops::adam_step_rows(m(8), m(8), m(8), m(6), ids(&rows), 4, 2, &hp, ids(&t1)),
    );
    case!(
        "adam_step_rows: row 5 of 2",
        cpu.adam_step_rows(&mut p, &mut gr, &mut mm, &mut v8, &far.to_vec(), 4, 2, &hp, &t1.to_vec()),
        ops::adam_step_rows(m(8), m(8), m(8), m(8), ids(&far), 4, 2, &hp, ids(&t1)),
    );
    case!(
        "adam_step: t = 0",
        cpu.adam_step(&mut p, &mut gr, &mut mm, &mut v8, 8, &hp, &t0.to_vec()),
        ops::adam_step(m(8), m(8), m(8), m(8), 8, &hp, ids(&t0)),
    );
    let mut mom = z(7);
    case!(
        "sgd_step_rows: short mom",
        cpu.sgd_step_rows(&mut p, &mut gr, &mut mom, &rows.to_vec(), 4, 2, &SgdHp::default()),
        ops::sgd_step_rows(m(8), m(8), m(7), ids(&rows), 4, 2, &SgdHp::default()),
    );
    let mut uo = Vec::new();
    let out3 = [0u32; 3];
    case!(
        "unique_ids: id 10 of 10",
        cpu.unique_ids(&bad.to_vec(), 3, 10, &mut uo),
        ops::unique_ids(ids(&bad), 3, 10, ids(&out3)),
    );
    let scores = z(10);
    let (tg, off, seen) = ([0u32, 1], [0u32, 2, 1], [3u32, 4]);
    let mut rk = vec![0u32; 2];
    case!(
        "rank_unseen: decreasing seen_off",
        cpu.rank_unseen(&scores, 2, 5, &tg.to_vec(), &off.to_vec(), &seen.to_vec(), &mut rk),
        ops::rank_unseen(m(10), 2, 5, ids(&tg), ids(&off), ids(&seen), ids(&[0, 0])),
    );
    let (tg9, off_ok) = ([0u32, 9], [0u32, 1, 2]);
    case!(
        "rank_unseen: target 9 of 5",
        cpu.rank_unseen(&scores, 2, 5, &tg9.to_vec(), &off_ok.to_vec(), &seen.to_vec(), &mut rk),
        ops::rank_unseen(m(10), 2, 5, ids(&tg9), ids(&off_ok), ids(&seen), ids(&[0, 0])),
    );
    let seen_far = [3u32, 7];
    let mut top = vec![0u32; 2];
    case!(
        "top_k: a seen item outside the items",
        cpu.top_k(&scores, 2, 5, 1, &off_ok.to_vec(), &seen_far.to_vec(), &mut top),
        ops::top_k(m(10), 2, 5, 1, ids(&off_ok), ids(&seen_far), ids(&[0, 0])),
    );
    let mut x4 = z(4);
    case!("add_assign: short x", cpu.add_assign(&mut x4, &t2, 4), ops::add_assign(m(4), m(2), 4));
    case!(
        "relu_backward: n past every buffer",
        cpu.relu_backward(&l4, &l4, &mut du, 5),
        ops::relu_backward(m(4), m(4), m(4), 5),
    );
    case!("fill: n past the buffer", cpu.fill(&mut x4, 5, 1.0), ops::fill(m(4), 5, 1.0));
    case!("sum_into: short acc", cpu.sum_into(&l4, 4, &mut Vec::new()), ops::sum_into(m(4), 4, m(0)));

    let mut failures = Vec::new();
    for (what, c, g) in &cases {
        println!("{what}: {}", c.as_ref().err().map_or("ok".to_string(), Error::to_string));
        if c.is_ok() {
            failures.push(format!("{what}: the CPU accepted the bad call"));
        } else if c != g {
            failures.push(format!("{what}: CPU {c:?}, CUDA {g:?}"));
        }
    }
    assert!(failures.is_empty(), "{} of {} disagree:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

/// Device-made ids (a sampled batch, a `unique_ids` output) have no host copy: only their
/// length is checked, as the shared checks say.
#[test]
fn device_made_ids_are_checked_by_length_only() {
    let dev = |cap| IdMem { addr: 0x40_000, cap, host: None, live: cap, count: Some(0x41_000) };
    assert!(ops::embedding_forward(m(40), 10, 4, dev(3), 3, m(12)).is_ok());
    let e = ops::embedding_forward(m(40), 10, 4, dev(2), 3, m(12)).unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { op: "embedding_forward", tensor: "ids", .. }), "{e}");
    // A device-advanced Adam step counter is taken as valid.
    assert!(ops::adam_step(m(8), m(8), m(8), m(8), 8, &AdamHp::default(), dev(1)).is_ok());
    // The evaluation kernels index the seen-items CSR unchecked: its offsets must be known.
    let e = ops::top_k(m(10), 2, 5, 1, dev(3), ids(&[0]), ids(&[0, 0])).unwrap_err();
    assert!(e.to_string().contains("offsets must be written from the host"), "{e}");
}
