//! What a fast training step needs from a model, beyond [`crate::Model`]: the model cut where
//! a step that splits a batch must cut it.
//!
//! The reference path ([`crate::train_step`]) never uses this module. A fast step (the CPU's
//! two-lane step, `ncf_cpu::TwoLaneStep`) runs a model's forward and backward on two halves of
//! a batch at once, each half with its own activations, and then adds every row's embedding
//! gradients into the tables itself, the users' tables on one thread and the items' on the
//! other. So it needs, per model: a second set of activations ([`LaneActs::like`]), the
//! backward up to each row's embedding gradients ([`LaneActs::backward_rows`]: the model's
//! `backward` without its last lines, the scatter-adds), and the scatter of one id side
//! ([`LaneActs::scatter_side`]). Tests in `ncf-cpu` hold the fast step to the reference.
//!
//! GMF splits too, though its rows are cheap (a product of two rows and a dot product): at
//! the large batches it trains best with, each half still has thousands of rows. MF (no head)
//! and the rating model do not.

use crate::layers::check_batch;
use crate::models::{AnyModel, GmfActs, MlpActs, Model, NeuMfActs};
use crate::params::{IdSource, ParamSet, SideTables};
use ncf_core::{Backend, Result};

/// A model's activations, driven with explicit parameters and gradients.
pub trait LaneActs<B: Backend>: Send + Sync + Sized {
    /// The same blocks with buffers for `rows` rows.
    fn like(&self, be: &B, rows: usize) -> Result<Self>;
    /// The model's forward.
    fn forward(&mut self, be: &B, p: &ParamSet<B>, users: &B::Ids, items: &B::Ids, b: usize) -> Result<()>;
    fn logits(&self) -> &B::Buf;
    /// The model's backward up to the embedding tables: dense gradients into `g`, each row's
    /// embedding gradients kept for [`LaneActs::scatter_side`].
    fn backward_rows(&mut self, be: &B, p: &ParamSet<B>, g: &mut ParamSet<B>, dlogits: &B::Buf, b: usize)
    -> Result<()>;
    /// Adds the rows' embedding gradients of one id side into that side's tables, in row order
    /// (`ids` = the batch's users or items).
    fn scatter_side(&self, be: &B, side: IdSource, t: &mut SideTables<'_, B>, ids: &B::Ids, b: usize) -> Result<()>;
}

impl<B: Backend> LaneActs<B> for GmfActs<B> {
    fn like(&self, be: &B, rows: usize) -> Result<Self> {
        Ok(GmfActs { gmf: self.gmf.like(be, rows)?, head: self.head.like(be, rows)? })
    }
    fn forward(&mut self, be: &B, p: &ParamSet<B>, users: &B::Ids, items: &B::Ids, b: usize) -> Result<()> {
        GmfActs::forward(self, be, p, users, items, b)
    }
    fn logits(&self) -> &B::Buf {
        &self.head.logits
    }
    fn backward_rows(
        &mut self,
        be: &B,
        p: &ParamSet<B>,
        g: &mut ParamSet<B>,
        dlogits: &B::Buf,
        b: usize,
    ) -> Result<()> {
        // = GmfActs::backward without the scatter-add.
        self.head.backward(be, p, g, &self.gmf.h, dlogits, b)?;
        self.gmf.backward(be, &self.head.dinp, b)
    }
    fn scatter_side(&self, be: &B, side: IdSource, t: &mut SideTables<'_, B>, ids: &B::Ids, b: usize) -> Result<()> {
        self.gmf.emb.backward_side(be, side, t, ids, b)
    }
}

impl<B: Backend> LaneActs<B> for MlpActs<B> {
    fn like(&self, be: &B, rows: usize) -> Result<Self> {
        Ok(MlpActs { mlp: self.mlp.like(be, rows)?, head: self.head.like(be, rows)? })
    }
    fn forward(&mut self, be: &B, p: &ParamSet<B>, users: &B::Ids, items: &B::Ids, b: usize) -> Result<()> {
        MlpActs::forward(self, be, p, users, items, b)
    }
    fn logits(&self) -> &B::Buf {
        &self.head.logits
    }
    fn backward_rows(
        &mut self,
        be: &B,
        p: &ParamSet<B>,
        g: &mut ParamSet<B>,
        dlogits: &B::Buf,
        b: usize,
    ) -> Result<()> {
        // = MlpActs::backward without the scatter-add.
        self.head.backward(be, p, g, self.mlp.out(), dlogits, b)?;
        self.mlp.backward(be, p, g, &self.head.dinp, b)
    }
    fn scatter_side(&self, be: &B, side: IdSource, t: &mut SideTables<'_, B>, ids: &B::Ids, b: usize) -> Result<()> {
        self.mlp.emb.backward_side(be, side, t, ids, b)
    }
}

impl<B: Backend> LaneActs<B> for NeuMfActs<B> {
    fn like(&self, be: &B, rows: usize) -> Result<Self> {
        NeuMfActs::like(self, be, rows)
    }
    fn forward(&mut self, be: &B, p: &ParamSet<B>, users: &B::Ids, items: &B::Ids, b: usize) -> Result<()> {
        NeuMfActs::forward(self, be, p, users, items, b)
    }
    fn logits(&self) -> &B::Buf {
        &self.head.logits
    }
    fn backward_rows(
        &mut self,
        be: &B,
        p: &ParamSet<B>,
        g: &mut ParamSet<B>,
        dlogits: &B::Buf,
        b: usize,
    ) -> Result<()> {
        // = NeuMfActs::backward without the scatter-adds.
        let (f, h) = (self.gmf.f(), self.mlp.out_width());
        self.head.backward(be, p, g, &self.cat, dlogits, b)?;
        be.split_cols(&self.head.dinp, f, h, b, &mut self.dh_gmf, &mut self.dx_mlp)?;
        self.mlp.backward(be, p, g, &self.dx_mlp, b)?;
        self.gmf.backward(be, &self.dh_gmf, b)
    }
    fn scatter_side(&self, be: &B, side: IdSource, t: &mut SideTables<'_, B>, ids: &B::Ids, b: usize) -> Result<()> {
        self.gmf.emb.backward_side(be, side, t, ids, b)?;
        self.mlp.emb.backward_side(be, side, t, ids, b)
    }
}

/// A model's parameters, gradients and activations, borrowed apart, for the models a batch
/// split pays for (GMF, MLP and NeuMF; MF has too little work per row to share). The
/// parameters are lent mutably so that the step can also update them.
pub enum LaneParts<'a, B: Backend> {
    Gmf(&'a mut ParamSet<B>, &'a mut ParamSet<B>, &'a mut GmfActs<B>),
    Mlp(&'a mut ParamSet<B>, &'a mut ParamSet<B>, &'a mut MlpActs<B>),
    NeuMf(&'a mut ParamSet<B>, &'a mut ParamSet<B>, &'a mut NeuMfActs<B>),
}

/// The parts of `model` for a batch of `b` rows, or `None` for MF (and the rating model,
/// whose bias tables the split does not cover: it trains by the reference step).
pub fn lane_parts<B: Backend>(model: &mut AnyModel<B>, b: usize) -> Result<Option<LaneParts<'_, B>>> {
    Ok(match model {
        AnyModel::Gmf(m) => {
            check_batch("gmf.lanes", b, Model::max_batch(m))?;
            Some(LaneParts::Gmf(&mut m.params, &mut m.grads, &mut m.acts))
        }
        AnyModel::Mlp(m) => {
            check_batch("mlp.lanes", b, Model::max_batch(m))?;
            Some(LaneParts::Mlp(&mut m.params, &mut m.grads, &mut m.acts))
        }
        AnyModel::NeuMf(m) => {
            check_batch("neumf.lanes", b, Model::max_batch(m))?;
            Some(LaneParts::NeuMf(&mut m.params, &mut m.grads, &mut m.acts))
        }
        AnyModel::Mf(_) | AnyModel::Rating(_) => None,
    })
}
