//! The launch plans of one NeuMF **reference** training step (what `ncf-model` runs on a backend, op by op:
//! sampling, the GMF and MLP towers, the head, BCE, the backward pass, the deterministic
//! scatter-adds with their row plans, the step counter and lazy Adam), built with
//! `ncf_cuda::plan` for two table sizes, MovieLens-1M (6,040 users, 3,706 items) and
//! MovieLens-20M (138,493 users, 26,744 items), at the same batch: which launches depend on
//! the size of the embedding tables. Pure (no GPU, no emulator).
//!
//! The GPU trains with the fused step where it applies (`kernels/fused.cu`); its three
//! launches do not depend on the tables at all (`ncf_cuda::fused`'s test
//! `plans_do_not_depend_on_the_tables`, at 1,000 and 100 M rows). The reference step below
//! still runs for SGD and dense embedding updates.
//!
//! Every buffer gets the same fake address in both builds (by name), so two plans are equal
//! exactly when kernel, grid, block, shared memory and every argument are.
//!
//! **The launches that depend on the table size**, and why:
//!
//! * `sample_batch`: arguments `n_users` and `n_items` (negatives are drawn from the item
//!   range; a user's known items are read from its CSR row). Grid and block follow the batch.
//!   Its work does not grow with the tables.
//! * The row plans (`rows_count`, `rows_scan`, `rows_place`, `rows_sort`) do not: they touch
//!   their table-sized `count`, `first` and `fill` arrays only at the batch's ids, and
//!   `rows_scan` scans the batch, not the table (it scanned the table's per-row counts, one
//!   block, 136 rows per thread at ML-20M's users, before `rows_*` were rewritten).
//! * Only when embedding tables are not updated lazily (`lazy_embeddings = false`):
//!   `adam_step` on a table covers all `n·d` elements, so its grid and `n` grow with the
//!   table. The training default (lazy) uses `adam_step_rows`, whose grid covers the batch's
//!   row capacity.
//!
//! Everything else — gathers, the GEMMs (`M` is the batch: `gemm_tiled`'s `grid.x` is
//! `⌈b/64⌉`), losses, scatter-adds, `adam_step_rows` — has the
//! same plan at both sizes. Not plans, and not size-dependent: `unique_ids` copies the cached
//! row plan's rows device to device.
use ncf_core::AdamHp;
use ncf_cuda::plan::{self, Addr, GpuGemm, Kernel, Loss, Plan, RowPlanBufs, Rows, SampleBufs, Step};
use std::collections::BTreeMap;

/// Fake device addresses, one per buffer name, assigned in order of first use (so the same in
/// every build that asks for the same names in the same order).
#[derive(Default)]
struct Addrs(BTreeMap<String, Addr>);

impl Addrs {
    fn of(&mut self, name: &str) -> Addr {
        let next = 0x1000 * (self.0.len() as u64 + 1);
        *self.0.entry(name.to_string()).or_insert(next)
    }
}

/// NeuMF with the reference sizes: GMF factors 8, MLP embeddings 32 and layers 64→32→16→8, a
/// head over 8 + 8 features; batch 256; Adam.
const F: usize = 8;
const D: usize = 32;
const LAYERS: [(usize, usize); 3] = [(64, 32), (32, 16), (16, 8)];
const B: usize = 256;

/// The plans of one training step, labelled, for tables of `users` × `items`.
fn step(users: usize, items: usize, g: GpuGemm, lazy: bool) -> Vec<(String, Plan)> {
    let mut a = Addrs::default();
    let mut out: Vec<(String, Plan)> = Vec::new();
    let mut push = |label: &str, p: ncf_core::Result<Plan>| out.push((label.to_string(), p.expect(label)));
    let hp = AdamHp::default();
    let (head_i, last) = (F + LAYERS[2].1, LAYERS.len() - 1);

    // Sampling: the batch from the device's epoch state, then state[0] += 1.
    let t = SampleBufs {
        train_off: a.of("train_off"),
        train_items: a.of("train_items"),
        known_off: a.of("known_off"),
        known_items: a.of("known_items"),
        n_users: users,
        n_items: items,
        n_neg: 4,
        rows: 5_000_000,
    };
    let (uid, iid, labels) = (a.of("users"), a.of("items"), a.of("labels"));
    push("sample_batch", plan::sample_batch(&t, a.of("state"), B, B, uid, iid, labels));

    // Forward: GMF tower, MLP tower, head, loss.
    let (gu, gi) = (a.of("gmf.user"), a.of("gmf.item"));
    let (pu, qi, h) = (a.of("gmf.pu"), a.of("gmf.qi"), a.of("gmf.h"));
    push("gmf user gather", plan::embedding_forward(gu, uid, pu, B, F));
    push("gmf item gather", plan::embedding_forward(gi, iid, qi, B, F));
    push("gmf_forward", Ok(plan::gmf_forward(pu, qi, h, B * F)));
    let (mu, mi) = (a.of("mlp.user"), a.of("mlp.item"));
    let (mpu, mqi, x0) = (a.of("mlp.pu"), a.of("mlp.qi"), a.of("mlp.x0"));
    push("mlp user gather", plan::embedding_forward(mu, uid, mpu, B, D));
    push("mlp item gather", plan::embedding_forward(mi, iid, mqi, B, D));
    push("mlp concat", plan::concat_cols((mpu, D), (mqi, D), B, x0));
    for (l, &(i, o)) in LAYERS.iter().enumerate() {
        let inp = if l == 0 { x0 } else { a.of(&format!("mlp.x{l}")) };
        let (w, bias, z, x) =
            (a.of(&format!("w{l}")), a.of(&format!("b{l}")), a.of(&format!("z{l}")), a.of(&format!("mlp.x{}", l + 1)));
        push(&format!("layer {l} forward"), plan::linear_relu_forward(g, inp, w, bias, z, x, B, i, o));
    }
    let (cat, logits) = (a.of("cat"), a.of("logits"));
    push("head concat", plan::concat_cols((h, F), (a.of(&format!("mlp.x{}", last + 1)), LAYERS[last].1), B, cat));
    push("head forward", plan::linear_forward(g, cat, a.of("head.w"), a.of("head.b"), logits, B, head_i, 1));
    let dlogits = a.of("dlogits");
    let partials = (a.of("partials"), a.of("done"));
    push("bce", plan::mean_loss(Loss::BceWithLogits, logits, labels, dlogits, partials, a.of("loss"), B));

    // Backward.
    let dcat = a.of("dcat");
    let (hw, hdw, hdb) = (a.of("head.w"), a.of("head.dw"), a.of("head.db"));
    push("head backward", plan::linear_backward(g, dlogits, cat, hw, Some(dcat), hdw, hdb, B, head_i, 1));
    let (dh, dx_last) = (a.of("dh"), a.of(&format!("mlp.dx{}", last + 1)));
    push("head split", plan::split_cols(dcat, (F, LAYERS[last].1), B, dh, dx_last));
    for (l, &(i, o)) in LAYERS.iter().enumerate().rev() {
        let inp = if l == 0 { x0 } else { a.of(&format!("mlp.x{l}")) };
        let (x, dx, dz) =
            (a.of(&format!("mlp.x{}", l + 1)), a.of(&format!("mlp.dx{}", l + 1)), a.of(&format!("dz{l}")));
        let (w, dw, db, dinp) =
            (a.of(&format!("w{l}")), a.of(&format!("dw{l}")), a.of(&format!("db{l}")), a.of(&format!("mlp.dx{l}")));
        push(
            &format!("layer {l} backward"),
            plan::linear_relu_backward(g, x, dx, dz, inp, w, Some(dinp), dw, db, B, i, o),
        );
    }
    let (dmpu, dmqi) = (a.of("mlp.dpu"), a.of("mlp.dqi"));
    push("mlp split", plan::split_cols(a.of("mlp.dx0"), (D, D), B, dmpu, dmqi));
    let (dpu, dqi) = (a.of("gmf.dpu"), a.of("gmf.dqi"));
    push("gmf_backward", Ok(plan::gmf_backward(dh, pu, qi, dpu, dqi, B * F)));

    // The scatter-adds: one row plan per id buffer (cached for the optimizer), then each table.
    let row_plan = |a: &mut Addrs, who: &str, ids: Addr, n: usize, out: &mut Vec<(String, Plan)>| {
        let bufs = RowPlanBufs {
            count: a.of(&format!("{who}.count")),
            first: a.of(&format!("{who}.first")),
            fill: a.of(&format!("{who}.fill")),
            order: a.of(&format!("{who}.order")),
            seg: a.of(&format!("{who}.seg")),
            uniq: a.of(&format!("{who}.uniq")),
            nuniq: a.of(&format!("{who}.nuniq")),
        };
        out.push((format!("{who} row plan"), plan::row_plan(ids, &bufs, B, n, B).unwrap()));
        bufs
    };
    let urp = row_plan(&mut a, "users", uid, users, &mut out);
    let irp = row_plan(&mut a, "items", iid, items, &mut out);
    let mut push = |label: &str, p: ncf_core::Result<Plan>| out.push((label.to_string(), p.expect(label)));
    let tables = [("gmf.user", dpu, &urp, users, F), ("gmf.item", dqi, &irp, items, F)];
    let tables = tables.into_iter().chain([("mlp.user", dmpu, &urp, users, D), ("mlp.item", dmqi, &irp, items, D)]);
    let tables: Vec<_> = tables.collect();
    for &(name, dout, rp, _, d) in &tables {
        let dtable = a.of(&format!("{name}.grad"));
        push(&format!("{name} scatter-add"), plan::embedding_backward_sorted(dout, rp, dtable, B, d));
    }

    // The optimizer: the step counter, then lazy Adam on the tables' batch rows (unique_ids'
    // output: the row plan's rows and count, copied device to device), dense Adam on the rest.
    let tdev = a.of("t");
    push("counter_add", Ok(plan::counter_add(tdev, 1)));
    for &(name, _, _, n, d) in &tables {
        let (p, g_, m, v) =
            (a.of(name), a.of(&format!("{name}.grad")), a.of(&format!("{name}.m")), a.of(&format!("{name}.v")));
        if lazy {
            let side = if name.ends_with("user") { "users" } else { "items" };
            let (list, count) = (a.of(&format!("{side}.unique")), a.of(&format!("{side}.unique_count")));
            let rows = Rows { list, cap: B, nrows_host: B, nrows_dev: Some(count) };
            push(&format!("{name} adam (lazy)"), plan::adam_step_rows(p, g_, m, v, &rows, d, &hp, tdev));
        } else {
            push(&format!("{name} adam (dense)"), Ok(plan::adam_step(p, g_, m, v, n * d, &hp, tdev)));
        }
    }
    let dense = LAYERS.iter().enumerate().flat_map(|(l, &(i, o))| [(format!("w{l}"), o * i), (format!("b{l}"), o)]);
    for (name, n) in dense.chain([("head.w".to_string(), head_i), ("head.b".to_string(), 1)]) {
        let (p, g_, m, v) =
            (a.of(&name), a.of(&format!("{name}.grad")), a.of(&format!("{name}.m")), a.of(&format!("{name}.v")));
        push(&format!("{name} adam"), Ok(plan::adam_step(p, g_, m, v, n, &hp, tdev)));
    }
    out
}

/// What differs between two builds of the same step: `(label, kernel, what)` for each launch
/// whose grid, block, shared memory or arguments differ.
fn differences(small: &[(String, Plan)], large: &[(String, Plan)]) -> Vec<(String, Kernel, String)> {
    assert_eq!(small.len(), large.len(), "the same ops at both sizes");
    let mut diffs = Vec::new();
    for ((label, p), (label2, q)) in small.iter().zip(large) {
        assert_eq!(label, label2);
        assert_eq!(p.steps().len(), q.steps().len(), "{label}: the same steps");
        for (s, t) in p.steps().iter().zip(q.steps()) {
            match (s, t) {
                (Step::Gemm(x), Step::Gemm(y)) => assert_eq!(x, y, "{label}: a cuBLAS call depends on the table size"),
                (Step::Kernel(x), Step::Kernel(y)) => {
                    assert_eq!(x.kernel, y.kernel, "{label}");
                    let kinds = |l: &plan::Launch| l.args().iter().map(|a| a.kind()).collect::<Vec<_>>();
                    assert_eq!(kinds(x), kinds(y), "{label}: argument types");
                    let mut what = Vec::new();
                    if (x.grid, x.block, x.smem) != (y.grid, y.block, y.smem) {
                        what.push("grid".to_string());
                    }
                    for (k, (u, v)) in x.args().iter().zip(y.args()).enumerate() {
                        if u != v {
                            what.push(format!("arg {k}"));
                        }
                    }
                    if !what.is_empty() {
                        diffs.push((label.clone(), x.kernel, what.join(", ")));
                    }
                }
                _ => panic!("{label}: a GEMM at one size, a kernel at the other"),
            }
        }
    }
    diffs
}

const ML1M: (usize, usize) = (6_040, 3_706);
const ML20M: (usize, usize) = (138_493, 26_744);

/// With lazy embedding updates (the training default), only the sampler's sizes depend on the
/// table size; every other launch of the step, the row plans included, is identical, for each
/// GEMM.
#[test]
fn a_training_steps_plans_do_not_depend_on_the_table_size_but_for_the_listed_ones() {
    for g in [GpuGemm::Naive, GpuGemm::Tiled, GpuGemm::Cublas] {
        let (small, large) = (step(ML1M.0, ML1M.1, g, true), step(ML20M.0, ML20M.1, g, true));
        let launches: usize = small.iter().map(|(_, p)| p.launches().count()).sum();
        let gemms: usize = small.iter().map(|(_, p)| p.steps().len() - p.launches().count()).sum();
        let diffs = differences(&small, &large);
        println!("{g:?}: {} ops, {launches} launches, {gemms} cuBLAS calls; size-dependent:", small.len());
        for (label, k, what) in &diffs {
            println!("  {label}: {k} ({what})");
        }
        let want = vec![("sample_batch".to_string(), Kernel::SampleBatch, "arg 4, arg 5".to_string())];
        assert_eq!(diffs, want, "{g:?}");
    }
}

/// Without lazy updates, each table's `adam_step` covers the whole table: its grid and `n`
/// grow with it (at ML-20M's 138,493 users × 32: 17,312 blocks).
#[test]
fn dense_adam_on_the_tables_depends_on_their_size() {
    let (small, large) = (step(ML1M.0, ML1M.1, GpuGemm::Tiled, false), step(ML20M.0, ML20M.1, GpuGemm::Tiled, false));
    let adam: Vec<(String, Kernel, String)> =
        differences(&small, &large).into_iter().filter(|d| d.1 == Kernel::AdamStep).collect();
    let tables = ["gmf.user", "gmf.item", "mlp.user", "mlp.item"];
    assert_eq!(adam.len(), tables.len(), "{adam:?}");
    for ((label, _, what), t) in adam.iter().zip(tables) {
        assert_eq!(label, &format!("{t} adam (dense)"));
        assert_eq!(what, "grid, arg 4");
    }
    let mlp_user = large.iter().find(|(l, _)| l == "mlp.user adam (dense)").and_then(|(_, p)| p.launch().copied());
    assert_eq!(mlp_user.map(|l| l.grid.0), Some((138_493 * 32usize).div_ceil(256) as u32));
}
