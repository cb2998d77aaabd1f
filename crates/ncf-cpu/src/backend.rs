//! `CpuBackend`: the [`Backend`] trait on host memory, by calling the kernels in [`crate::ops`].
//!
//! Every method validates its arguments with the op's shared check in [`ncf_core::check`]
//! (buffer lengths and ids, the same checks and errors as every other backend) before any kernel
//! runs, so the kernels themselves stay short.

use crate::ops::gemm::{CpuFloat, GemmImpl};
use crate::ops::{activation, elementwise, embedding, linear, loss, norm, optim};
use ncf_core::backend::{rank_among_unseen, top_k_host};
use ncf_core::check::{self, Ids};
use ncf_core::sample::{Csrs, EpochKeys, SampleTables, row_at};
use ncf_core::{AdamHp, Backend, Result, SgdHp};
use std::marker::PhantomData;

/// The CPU backend, generic over the element type (`f32` to train, `f64` for gradient checks).
/// Parallel kernels run on the current rayon pool; size it with `rayon::ThreadPoolBuilder`.
#[derive(Clone, Debug, Default)]
pub struct CpuBackend<T> {
    /// Which GEMM the dense layers call: the naive loop, the scratch kernel, or matrixmultiply.
    pub gemm: GemmImpl,
    _t: PhantomData<T>,
}

impl<T> CpuBackend<T> {
    pub fn new(gemm: GemmImpl) -> Self {
        CpuBackend { gemm, _t: PhantomData }
    }
}

impl<T: CpuFloat> Backend for CpuBackend<T> {
    type T = T;
    type Buf = Vec<T>;
    type Ids = Vec<u32>;

    fn name(&self) -> String {
        format!("cpu({}, gemm={}, threads={})", T::NAME, self.gemm, rayon::current_num_threads())
    }

    fn zeros(&self, len: usize) -> Result<Vec<T>> {
        Ok(vec![T::ZERO; len])
    }
    fn upload(&self, host: &[T]) -> Result<Vec<T>> {
        Ok(host.to_vec())
    }
    fn write(&self, dst: &mut Vec<T>, src: &[T]) -> Result<()> {
        check::write(dst.len(), src.len())?;
        dst[..src.len()].copy_from_slice(src);
        Ok(())
    }
    fn download(&self, buf: &Vec<T>) -> Result<Vec<T>> {
        Ok(buf.clone())
    }
    fn len(&self, buf: &Vec<T>) -> usize {
        buf.len()
    }
    fn fill(&self, buf: &mut Vec<T>, n: usize, value: T) -> Result<()> {
        check::fill(buf.len(), n)?;
        buf[..n].fill(value);
        Ok(())
    }
    fn zeros_ids(&self, len: usize) -> Result<Vec<u32>> {
        Ok(vec![0; len])
    }
    fn write_ids(&self, dst: &mut Vec<u32>, src: &[u32]) -> Result<()> {
        check::write_ids(dst.len(), src.len())?;
        dst[..src.len()].copy_from_slice(src);
        Ok(())
    }
    fn download_ids(&self, ids: &Vec<u32>, n: usize) -> Result<Vec<u32>> {
        check::download_ids(ids.len(), n)?;
        Ok(ids[..n].to_vec())
    }
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
    fn embedding_forward(
        &self,
        table: &Vec<T>,
        n: usize,
        d: usize,
        ids: &Vec<u32>,
        b: usize,
        out: &mut Vec<T>,
    ) -> Result<()> {
        check::embedding_forward(table.len(), n, d, Ids::host(ids), b, out.len())?;
        embedding::embedding_forward(&table[..n * d], d, &ids[..b], &mut out[..b * d]);
        Ok(())
    }

    fn gather_add_relu(
        &self,
        a: &Vec<T>,
        na: usize,
        ia: &Vec<u32>,
        c: &Vec<T>,
        nc: usize,
        ic: &Vec<u32>,
        d: usize,
        b: usize,
        out: &mut Vec<T>,
    ) -> Result<()> {
        check::gather_add_relu(a.len(), na, Ids::host(ia), c.len(), nc, Ids::host(ic), d, b, out.len())?;
        embedding::gather_add_relu(&a[..na * d], &ia[..b], &c[..nc * d], &ic[..b], d, &mut out[..b * d]);
        Ok(())
    }

    fn embedding_backward(
        &self,
        dout: &Vec<T>,
        ids: &Vec<u32>,
        b: usize,
        d: usize,
        dtable: &mut Vec<T>,
        n: usize,
    ) -> Result<()> {
        check::embedding_backward(dout.len(), Ids::host(ids), b, d, dtable.len(), n)?;
        embedding::embedding_backward(&dout[..b * d], d, &ids[..b], &mut dtable[..n * d]);
        Ok(())
    }

    fn linear_forward(
        &self,
        inp: &Vec<T>,
        w: &Vec<T>,
        bias: &Vec<T>,
        out: &mut Vec<T>,
        b: usize,
        i: usize,
        o: usize,
    ) -> Result<()> {
        check::linear_forward(inp.len(), w.len(), bias.len(), out.len(), b, i, o)?;
        linear::linear_forward(self.gemm, &inp[..b * i], &w[..o * i], &bias[..o], &mut out[..b * o], b, i, o)
    }

    fn linear_relu_forward(
        &self,
        inp: &Vec<T>,
        w: &Vec<T>,
        bias: &Vec<T>,
        z: &mut Vec<T>,
        x: &mut Vec<T>,
        b: usize,
        i: usize,
        o: usize,
    ) -> Result<()> {
        check::linear_relu_forward(inp.len(), w.len(), bias.len(), z.len(), x.len(), b, i, o)?;
        let (inp, w, bias) = (&inp[..b * i], &w[..o * i], &bias[..o]);
        linear::linear_relu_forward(self.gemm, inp, w, bias, &mut z[..b * o], &mut x[..b * o], b, i, o)
    }

    fn linear_relu_backward(
        &self,
        x: &Vec<T>,
        dx: &Vec<T>,
        dz: &mut Vec<T>,
        inp: &Vec<T>,
        w: &Vec<T>,
        dinp: Option<&mut Vec<T>>,
        dw: &mut Vec<T>,
        dbias: &mut Vec<T>,
        b: usize,
        i: usize,
        o: usize,
    ) -> Result<()> {
        check::linear_relu_backward(
            x.len(),
            dx.len(),
            dz.len(),
            inp.len(),
            w.len(),
            dinp.as_ref().map(|d| d.len()),
            dw.len(),
            dbias.len(),
            b,
            i,
            o,
        )?;
        let dinp = dinp.map(|d| &mut d[..b * i]);
        let (x, dx, inp, w) = (&x[..b * o], &dx[..b * o], &inp[..b * i], &w[..o * i]);
        linear::linear_relu_backward(
            self.gemm,
            x,
            dx,
            &mut dz[..b * o],
            inp,
            w,
            dinp,
            &mut dw[..o * i],
            &mut dbias[..o],
            b,
            i,
            o,
        )
    }

    fn linear_backward(
        &self,
        dout: &Vec<T>,
        inp: &Vec<T>,
        w: &Vec<T>,
        dinp: Option<&mut Vec<T>>,
        dw: &mut Vec<T>,
        dbias: &mut Vec<T>,
        b: usize,
        i: usize,
        o: usize,
    ) -> Result<()> {
        check::linear_backward(
            dout.len(),
            inp.len(),
            w.len(),
            dinp.as_ref().map(|x| x.len()),
            dw.len(),
            dbias.len(),
            b,
            i,
            o,
        )?;
        let dinp = dinp.map(|x| &mut x[..b * i]);
        linear::linear_backward(
            self.gemm,
            &dout[..b * o],
            &inp[..b * i],
            &w[..o * i],
            dinp,
            &mut dw[..o * i],
            &mut dbias[..o],
            b,
            i,
            o,
        )
    }

    fn relu_forward(&self, inp: &Vec<T>, out: &mut Vec<T>, n: usize) -> Result<()> {
        check::relu_forward(inp.len(), out.len(), n)?;
        activation::relu_forward(&inp[..n], &mut out[..n]);
        Ok(())
    }
    fn relu_backward(&self, out: &Vec<T>, dout: &Vec<T>, dinp: &mut Vec<T>, n: usize) -> Result<()> {
        check::relu_backward(out.len(), dout.len(), dinp.len(), n)?;
        activation::relu_backward(&out[..n], &dout[..n], &mut dinp[..n]);
        Ok(())
    }
    fn sigmoid_forward(&self, inp: &Vec<T>, out: &mut Vec<T>, n: usize) -> Result<()> {
        check::sigmoid_forward(inp.len(), out.len(), n)?;
        activation::sigmoid_forward(&inp[..n], &mut out[..n]);
        Ok(())
    }

    fn bce_with_logits(
        &self,
        logits: &Vec<T>,
        labels: &Vec<T>,
        b: usize,
        loss_acc: &mut Vec<T>,
        dlogits: &mut Vec<T>,
    ) -> Result<()> {
        check::bce_with_logits(logits.len(), labels.len(), b, loss_acc.len(), dlogits.len())?;
        let l = loss::bce_with_logits(&logits[..b], &labels[..b], &mut dlogits[..b]);
        loss_acc[0] += T::from_f64(l);
        Ok(())
    }

    fn mse(&self, pred: &Vec<T>, target: &Vec<T>, b: usize, loss_acc: &mut Vec<T>, dpred: &mut Vec<T>) -> Result<()> {
        check::mse(pred.len(), target.len(), b, loss_acc.len(), dpred.len())?;
        let l = loss::mse(&pred[..b], &target[..b], &mut dpred[..b]);
        loss_acc[0] += T::from_f64(l);
        Ok(())
    }

    fn dropout(&self, inp: &Vec<T>, out: &mut Vec<T>, n: usize, p: f64, seed: u64) -> Result<()> {
        check::dropout(inp.len(), out.len(), n, p)?;
        norm::dropout(&inp[..n], &mut out[..n], p, seed);
        Ok(())
    }
    fn batchnorm_forward_train(
        &self,
        x: &Vec<T>,
        gamma: &Vec<T>,
        beta: &Vec<T>,
        b: usize,
        h: usize,
        eps: f64,
        momentum: f64,
        y: &mut Vec<T>,
        xhat: &mut Vec<T>,
        inv: &mut Vec<T>,
        (rmean, rvar): (&mut Vec<T>, &mut Vec<T>),
    ) -> Result<()> {
        check::batchnorm_forward_train(
            x.len(),
            gamma.len(),
            beta.len(),
            b,
            h,
            eps,
            momentum,
            y.len(),
            xhat.len(),
            inv.len(),
            rmean.len(),
            rvar.len(),
        )?;
        norm::batchnorm_forward_train(x, gamma, beta, (b, h), eps, momentum, y, xhat, inv, (rmean, rvar));
        Ok(())
    }
    fn batchnorm_forward_eval(
        &self,
        x: &Vec<T>,
        gamma: &Vec<T>,
        beta: &Vec<T>,
        rmean: &Vec<T>,
        rvar: &Vec<T>,
        b: usize,
        h: usize,
        eps: f64,
        y: &mut Vec<T>,
    ) -> Result<()> {
        check::batchnorm_forward_eval(x.len(), gamma.len(), beta.len(), rmean.len(), rvar.len(), b, h, eps, y.len())?;
        norm::batchnorm_forward_eval(x, gamma, beta, rmean, rvar, (b, h), eps, y);
        Ok(())
    }
    fn batchnorm_backward(
        &self,
        dy: &Vec<T>,
        xhat: &Vec<T>,
        gamma: &Vec<T>,
        inv: &Vec<T>,
        b: usize,
        h: usize,
        dx: &mut Vec<T>,
        dgamma: &mut Vec<T>,
        dbeta: &mut Vec<T>,
    ) -> Result<()> {
        check::batchnorm_backward(
            dy.len(),
            xhat.len(),
            gamma.len(),
            inv.len(),
            b,
            h,
            dx.len(),
            dgamma.len(),
            dbeta.len(),
        )?;
        norm::batchnorm_backward(dy, xhat, gamma, inv, (b, h), dx, dgamma, dbeta);
        Ok(())
    }

    fn gmf_forward(&self, u: &Vec<T>, v: &Vec<T>, out: &mut Vec<T>, n: usize) -> Result<()> {
        check::gmf_forward(u.len(), v.len(), out.len(), n)?;
        elementwise::gmf_forward(&u[..n], &v[..n], &mut out[..n]);
        Ok(())
    }
    fn gmf_backward(
        &self,
        dout: &Vec<T>,
        u: &Vec<T>,
        v: &Vec<T>,
        du: &mut Vec<T>,
        dv: &mut Vec<T>,
        n: usize,
    ) -> Result<()> {
        check::gmf_backward(dout.len(), u.len(), v.len(), du.len(), dv.len(), n)?;
        elementwise::gmf_backward(&dout[..n], &u[..n], &v[..n], &mut du[..n], &mut dv[..n]);
        Ok(())
    }

    fn concat_cols(&self, a: &Vec<T>, da: usize, c: &Vec<T>, dc: usize, b: usize, out: &mut Vec<T>) -> Result<()> {
        check::concat_cols(a.len(), da, c.len(), dc, b, out.len())?;
        elementwise::concat_cols(&a[..b * da], da, &c[..b * dc], dc, &mut out[..b * (da + dc)]);
        Ok(())
    }
    fn split_cols(
        &self,
        dout: &Vec<T>,
        da: usize,
        dc: usize,
        b: usize,
        grad_a: &mut Vec<T>,
        grad_c: &mut Vec<T>,
    ) -> Result<()> {
        check::split_cols(dout.len(), da, dc, b, grad_a.len(), grad_c.len())?;
        elementwise::split_cols(&dout[..b * (da + dc)], da, dc, &mut grad_a[..b * da], &mut grad_c[..b * dc]);
        Ok(())
    }

    fn rowdot_forward(&self, u: &Vec<T>, v: &Vec<T>, b: usize, d: usize, out: &mut Vec<T>) -> Result<()> {
        check::rowdot_forward(u.len(), v.len(), b, d, out.len())?;
        elementwise::rowdot_forward(&u[..b * d], &v[..b * d], d, &mut out[..b]);
        Ok(())
    }
    fn rowdot_backward(
        &self,
        dout: &Vec<T>,
        u: &Vec<T>,
        v: &Vec<T>,
        b: usize,
        d: usize,
        du: &mut Vec<T>,
        dv: &mut Vec<T>,
    ) -> Result<()> {
        check::rowdot_backward(dout.len(), u.len(), v.len(), b, d, du.len(), dv.len())?;
        elementwise::rowdot_backward(&dout[..b], &u[..b * d], &v[..b * d], d, &mut du[..b * d], &mut dv[..b * d]);
        Ok(())
    }

    fn add_assign(&self, out: &mut Vec<T>, x: &Vec<T>, n: usize) -> Result<()> {
        check::add_assign(out.len(), x.len(), n)?;
        elementwise::add_assign(&mut out[..n], &x[..n]);
        Ok(())
    }
    fn scale(&self, buf: &mut Vec<T>, n: usize, s: T) -> Result<()> {
        check::scale(buf.len(), n)?;
        elementwise::scale(&mut buf[..n], s);
        Ok(())
    }
    fn add_scalar(&self, out: &mut Vec<T>, s: &Vec<T>, n: usize) -> Result<()> {
        check::add_scalar(out.len(), s.len(), n)?;
        elementwise::add_scalar(&mut out[..n], s[0]);
        Ok(())
    }
    fn sum_into(&self, x: &Vec<T>, n: usize, acc: &mut Vec<T>) -> Result<()> {
        check::sum_into(x.len(), n, acc.len())?;
        acc[0] += elementwise::sum(&x[..n]);
        Ok(())
    }

    fn sgd_step(&self, p: &mut Vec<T>, g: &mut Vec<T>, mom: &mut Vec<T>, n: usize, hp: &SgdHp) -> Result<()> {
        check::sgd_step(p.len(), g.len(), mom.len(), n)?;
        optim::sgd_step(&mut p[..n], &mut g[..n], &mut mom[..n], hp);
        Ok(())
    }
    fn adam_step(
        &self,
        p: &mut Vec<T>,
        g: &mut Vec<T>,
        m: &mut Vec<T>,
        v: &mut Vec<T>,
        n: usize,
        hp: &AdamHp,
        t: &Vec<u32>,
    ) -> Result<()> {
        check::adam_step(p.len(), g.len(), m.len(), v.len(), n, Ids::host(t))?;
        optim::adam_step(&mut p[..n], &mut g[..n], &mut m[..n], &mut v[..n], hp, t[0] as u64);
        Ok(())
    }
    fn sgd_step_rows(
        &self,
        p: &mut Vec<T>,
        g: &mut Vec<T>,
        mom: &mut Vec<T>,
        rows: &Vec<u32>,
        d: usize,
        n: usize,
        hp: &SgdHp,
    ) -> Result<()> {
        check::sgd_step_rows(p.len(), g.len(), mom.len(), Ids::host(rows), d, n)?;
        optim::sgd_step_rows(&mut p[..n * d], &mut g[..n * d], &mut mom[..n * d], rows, d, hp);
        Ok(())
    }
    fn adam_step_rows(
        &self,
        p: &mut Vec<T>,
        g: &mut Vec<T>,
        m: &mut Vec<T>,
        v: &mut Vec<T>,
        rows: &Vec<u32>,
        d: usize,
        n: usize,
        hp: &AdamHp,
        t: &Vec<u32>,
    ) -> Result<()> {
        check::adam_step_rows(p.len(), g.len(), m.len(), v.len(), Ids::host(rows), d, n, Ids::host(t))?;
        let t = t[0] as u64;
        optim::adam_step_rows(&mut p[..n * d], &mut g[..n * d], &mut m[..n * d], &mut v[..n * d], rows, d, hp, t);
        Ok(())
    }
    fn unique_ids(&self, ids: &Vec<u32>, b: usize, n: usize, out: &mut Vec<u32>) -> Result<()> {
        check::unique_ids(Ids::host(ids), b, n, None)?;
        // `out` keeps its capacity across steps: no allocation once it has held a full batch.
        out.clear();
        out.resize(b, 0);
        let count = optim::unique_ids(&ids[..b], n, &mut out[..b]);
        out.truncate(count);
        Ok(())
    }
    fn counter_add(&self, c: &mut Vec<u32>, add: u32) -> Result<()> {
        check::counter_add(c.len())?;
        c[0] = c[0].wrapping_add(add);
        Ok(())
    }

    fn sample_batch(
        &self,
        tables: &SampleTables<Self>,
        state: &mut Vec<u32>,
        batch: usize,
        b: usize,
        users: &mut Vec<u32>,
        items: &mut Vec<u32>,
        labels: &mut Vec<T>,
    ) -> Result<()> {
        check::sample_batch(state.len(), batch, b, users.len(), items.len(), labels.len(), tables.rows())?;
        let first = check::sample_slots(state[0], batch, b, tables.rows())?;
        let c = Csrs {
            train_off: &tables.train_off[..tables.n_users + 1],
            train_items: &tables.train_items[..tables.positives],
            known_off: &tables.known_off[..tables.n_users + 1],
            known_items: &tables.known_items,
            n_items: tables.n_items as u32,
            n_neg: tables.n_neg as u32,
        };
        let keys = EpochKeys {
            perm: state[1] as u64 | (state[2] as u64) << 32,
            draw: state[3] as u64 | (state[4] as u64) << 32,
        };
        for k in 0..b {
            let (u, i, y) = row_at(&c, &keys, first + k as u64);
            users[k] = u;
            items[k] = i;
            labels[k] = T::from_f64(y as f64);
        }
        state[0] += 1;
        Ok(())
    }

    fn rank_unseen(
        &self,
        scores: &Vec<T>,
        u: usize,
        n: usize,
        targets: &Vec<u32>,
        seen_off: &Vec<u32>,
        seen: &Vec<u32>,
        ranks: &mut Vec<u32>,
    ) -> Result<()> {
        check::rank_unseen(scores.len(), u, n, Ids::host(targets), Ids::host(seen_off), Ids::host(seen), ranks.len())?;
        // One user per task.
        use rayon::prelude::*;
        ranks[..u].par_iter_mut().enumerate().for_each(|(c, rank)| {
            let seen_c = &seen[seen_off[c] as usize..seen_off[c + 1] as usize];
            *rank = rank_among_unseen(&scores[c * n..(c + 1) * n], targets[c] as usize, seen_c) as u32;
        });
        Ok(())
    }

    fn top_k(
        &self,
        scores: &Vec<T>,
        u: usize,
        n: usize,
        k: usize,
        seen_off: &Vec<u32>,
        seen: &Vec<u32>,
        out: &mut Vec<u32>,
    ) -> Result<()> {
        check::top_k(scores.len(), u, n, k, Ids::host(seen_off), Ids::host(seen), Some(out.len()))?;
        let res = top_k_host(scores, u, n, k, seen_off, seen);
        out[..u * k].copy_from_slice(&res);
        Ok(())
    }

    type Graph = ();
    fn capture(&self, _f: &mut dyn FnMut() -> Result<()>) -> Result<Option<()>> {
        Ok(None)
    }
    fn replay(&self, _graph: &()) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ncf_core::Error;

    #[test]
    fn bad_shapes_and_ids_are_typed_errors_naming_op_and_shapes() {
        let be = CpuBackend::<f32>::default();
        let table = vec![0.0f32; 10 * 4];
        let mut out = vec![0.0f32; 3 * 4];
        let err = be.embedding_forward(&table, 10, 4, &vec![1, 10, 2], 3, &mut out).unwrap_err();
        assert!(matches!(err, Error::IdOutOfRange { op: "embedding_forward", id: 10, pos: 1, rows: 10, .. }), "{err}");
        assert!(err.to_string().contains("id 10 at batch position 1"), "{err}");

        let inp = vec![0.0f32; 4 * 3];
        let w = vec![0.0f32; 2 * 5]; // should be (2,3) = 6: fine; ask for i = 5 instead
        let mut o = vec![0.0f32; 4 * 2];
        let err = be.linear_forward(&inp, &w, &vec![0.0; 2], &mut o, 4, 5, 2).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("linear_forward: shape mismatch for `inp`") && msg.contains("(4, 5) = 20 elements"),
            "{msg}"
        );

        let mut small = vec![0.0f32; 3];
        let err =
            be.linear_backward(&vec![0.0; 8], &inp, &w, None, &mut small, &mut vec![0.0; 2], 4, 3, 2).unwrap_err();
        assert!(err.to_string().contains("`dw`: expected (2, 3) = 6 elements, got a buffer of 3 elements"), "{err}");

        let err = be
            .adam_step_rows(
                &mut vec![0.0; 8],
                &mut vec![0.0; 8],
                &mut vec![0.0; 8],
                &mut vec![0.0; 8],
                &vec![5],
                4,
                2,
                &AdamHp::default(),
                &vec![1],
            )
            .unwrap_err();
        assert!(matches!(err, Error::IdOutOfRange { op: "adam_step_rows", id: 5, .. }), "{err}");
        let err = be.bce_with_logits(&vec![], &vec![], 0, &mut vec![0.0], &mut vec![]).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument { op: "bce_with_logits", .. }), "{err}");
    }

    /// The same error for the same bad call: every sample bad call of
    /// [`ncf_core::check::bad_calls`] (a short weight, an id outside its table, a short optimizer
    /// state, an overflowing size, …) gives on the CPU, in f32 and f64, exactly the error the
    /// shared check gives for the same arguments.
    #[test]
    fn bad_calls_give_the_shared_checks_errors() {
        fn agree<T: CpuFloat>() {
            let calls = check::bad_calls(&CpuBackend::<T>::default()).unwrap();
            assert!(calls.len() >= 20, "{} calls", calls.len());
            for c in calls {
                assert!(c.shared.is_err(), "{}: the sample call is not bad: {:?}", c.what, c.shared);
                assert_eq!(c.backend, c.shared, "{}", c.what);
            }
        }
        agree::<f32>();
        agree::<f64>();
    }

    /// `sample_batch` walks the epoch batch by batch: the concatenated batches are the
    /// epoch's slots in order ([`row_at`]), the counter advances once per batch, and a batch
    /// past the epoch's end is an error.
    #[test]
    fn sample_batch_walks_the_epoch_slot_by_slot() {
        let be = CpuBackend::<f32>::default();
        let (off, items) = (vec![0usize, 3, 3, 7], vec![1u32, 4, 6, 0, 2, 3, 9]);
        let tables = SampleTables::upload(&be, (&off, &items), (&off, &items), 10, 2).unwrap();
        assert_eq!(tables.rows(), 21);
        let keys = EpochKeys::new(11, 2);
        let k = keys.words();
        let mut state = vec![0, k[0], k[1], k[2], k[3]];
        let (mut u, mut i, mut y) = (vec![0u32; 8], vec![0u32; 8], vec![0f32; 8]);
        let mut got = Vec::new();
        for b in [8, 8, 5] {
            be.sample_batch(&tables, &mut state, 8, b, &mut u, &mut i, &mut y).unwrap();
            got.extend((0..b).map(|k| (u[k], i[k], y[k])));
        }
        assert_eq!(state[0], 3);
        let off32: Vec<u32> = off.iter().map(|&o| o as u32).collect();
        let c = Csrs {
            train_off: &off32,
            train_items: &items,
            known_off: &off32,
            known_items: &items,
            n_items: 10,
            n_neg: 2,
        };
        let want: Vec<_> = (0..21).map(|s| row_at(&c, &keys, s)).collect();
        assert_eq!(got, want);
        let err = be.sample_batch(&tables, &mut state, 8, 1, &mut u, &mut i, &mut y).unwrap_err();
        assert!(err.to_string().contains("exceed the epoch's 21 rows"), "{err}");
    }

    /// Full-ranking ranks and top-K lists against brute force on random scores with many
    /// ties (scores rounded to tenths): ranks count unseen items scoring at least the target's
    /// score; top-K is sorted by score, ties to the lower id, seen items left out.
    #[test]
    fn rank_unseen_and_top_k_match_brute_force() {
        let be = CpuBackend::<f32>::default();
        let (u, n, k) = (7usize, 40usize, 6usize);
        let mut x = 12345u64;
        let mut next = || {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (x >> 33) as u32
        };
        let scores: Vec<f32> = (0..u * n).map(|_| (next() % 10) as f32 / 10.0).collect();
        let targets: Vec<u32> = (0..u).map(|_| next() % n as u32).collect();
        let mut seen_off = vec![0u32];
        let mut seen = Vec::new();
        for (c, &t) in targets.iter().enumerate() {
            let mut s: Vec<u32> = (0..n as u32).filter(|&j| j != t && next() % 3 == 0).collect();
            if c == 6 {
                s = (0..n as u32).filter(|&j| j >= 3).collect(); // only 3 unseen items: top-K runs out
            }
            seen.extend(s);
            seen_off.push(seen.len() as u32);
        }
        let mut ranks = vec![0u32; u];
        be.rank_unseen(&scores, u, n, &targets, &seen_off, &seen, &mut ranks).unwrap();
        let mut top = vec![0u32; u * k];
        be.top_k(&scores, u, n, k, &seen_off, &seen, &mut top).unwrap();
        for c in 0..u {
            let row = &scores[c * n..(c + 1) * n];
            let seen_c = &seen[seen_off[c] as usize..seen_off[c + 1] as usize];
            let t = targets[c] as usize;
            let want = (0..n).filter(|&j| j != t && !seen_c.contains(&(j as u32)) && row[j] >= row[t]).count();
            assert_eq!(ranks[c] as usize, want, "rank of user slot {c}");
            let mut unseen: Vec<u32> = (0..n as u32).filter(|j| !seen_c.contains(j)).collect();
            unseen.sort_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]).then(a.cmp(&b)));
            unseen.resize(k.max(unseen.len()), u32::MAX);
            assert_eq!(top[c * k..(c + 1) * k], unseen[..k], "top-{k} of user slot {c}");
        }
        let mut last = top[6 * k..6 * k + 3].to_vec();
        last.sort_unstable();
        assert_eq!(last, vec![0, 1, 2], "user slot 6 has only items 0..3 unseen");
        assert_eq!(top[6 * k + 3..7 * k], [u32::MAX; 3], "and no more");
    }
}
