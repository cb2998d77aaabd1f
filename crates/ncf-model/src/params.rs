//! Parameters and gradients: flat named buffers that mirror each other.
//!
//! A model's [`ParamSet`] is a list of named tensors (`gmf_user_embedding (U,F)`,
//! `mlp_0_weight (H,I)`, …). Its gradients are a second `ParamSet` with the same names, shapes
//! and order, so "for every parameter, step it with its gradient" is one loop over indices.

use crate::init::Init;
use ncf_core::{Backend, Error, Float, Result, Rng};

/// Which id stream indexes an embedding table's rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdSource {
    User,
    Item,
}

/// What a tensor is; optimizers and regularization are configured per role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A lookup table `(N,D)` whose rows are selected by user or item ids.
    Embedding(IdSource),
    /// A dense weight `(O,I)`.
    Weight,
    /// A bias `(O)` (also MF's global bias, shape `(1)`).
    Bias,
    /// State the forward pass keeps, not trained (batch norm's running mean and variance): the
    /// optimizer leaves it alone and it has no gradient, but it is saved with the weights.
    Stat,
}

/// One named tensor on a backend.
pub struct Tensor<B: Backend> {
    pub name: String,
    pub shape: Vec<usize>,
    pub role: Role,
    pub buf: B::Buf,
}

impl<B: Backend> Tensor<B> {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    /// Row width `D` of a 2-d tensor (1 for a vector).
    pub fn row_width(&self) -> usize {
        if self.shape.len() >= 2 { self.shape[1..].iter().product() } else { 1 }
    }
    /// Rows `N` of the tensor (its first dimension).
    pub fn rows(&self) -> usize {
        self.shape.first().copied().unwrap_or(1)
    }
}

/// A list of named tensors. Index `k` of a model's params and of its grads is the same tensor.
pub struct ParamSet<B: Backend> {
    pub tensors: Vec<Tensor<B>>,
    /// Bumped whenever the values change through [`ParamSet::load`], [`ParamSet::buf_mut`],
    /// [`ParamSet::touch`] or an optimizer step, so caches derived from the weights (the
    /// scoring tables of [`crate::Model::prepare_scoring`]) can tell they are stale. Code that
    /// writes `tensors[k].buf` directly must call [`ParamSet::touch`].
    pub generation: u64,
}

/// A host copy of one tensor, in f64, for reports, tests and (later) checkpoints.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
}

impl<B: Backend> ParamSet<B> {
    /// Index of the tensor called `name`.
    pub fn index(&self, name: &str) -> Option<usize> {
        self.tensors.iter().position(|t| t.name == name)
    }

    /// The buffer of tensor `k`.
    pub fn buf(&self, k: usize) -> &B::Buf {
        &self.tensors[k].buf
    }

    /// The mutable buffer of tensor `k`.
    pub fn buf_mut(&mut self, k: usize) -> &mut B::Buf {
        self.generation += 1;
        &mut self.tensors[k].buf
    }

    /// The buffers of the embedding tables, split by the ids that index them: users, items.
    /// The two groups are disjoint borrows, so one thread can write the users' tables while
    /// another writes the items' (the CPU's two-lane step, `ncf_cpu::step`, scatters its
    /// gradients so).
    /// A model has at most [`MAX_SIDE_TABLES`] tables per side.
    pub fn side_tables_mut(&mut self) -> Result<[SideTables<'_, B>; 2]> {
        self.side_tables_and_rest_mut(|_, _| {})
    }

    /// [`ParamSet::side_tables_mut`], handing every other tensor (with its index) to `rest`
    /// as it goes: disjoint borrows, so the CPU's two-lane step can sum a dense gradient on
    /// the thread that scatters one side.
    pub fn side_tables_and_rest_mut<'a>(
        &'a mut self,
        mut rest: impl FnMut(usize, &'a mut Tensor<B>),
    ) -> Result<[SideTables<'a, B>; 2]> {
        self.generation += 1;
        let mut sides = [SideTables::default(), SideTables::default()];
        for (k, t) in self.tensors.iter_mut().enumerate() {
            let Role::Embedding(src) = t.role else {
                rest(k, t);
                continue;
            };
            sides[usize::from(src == IdSource::Item)].insert(k, &mut t.buf)?;
        }
        Ok(sides)
    }

    /// Records that the values changed (see [`ParamSet::generation`]).
    pub fn touch(&mut self) {
        self.generation += 1;
    }

    /// A zero-filled set with the same names, shapes and roles (the gradients' layout).
    pub fn zeros_like(&self, be: &B) -> Result<Self> {
        let tensors = self
            .tensors
            .iter()
            .map(|t| {
                Ok(Tensor { name: t.name.clone(), shape: t.shape.clone(), role: t.role, buf: be.zeros(t.numel())? })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(ParamSet { tensors, generation: 0 })
    }

    /// Sets every element of every tensor to zero.
    pub fn zero(&mut self, be: &B) -> Result<()> {
        for t in &mut self.tensors {
            let n = t.numel();
            be.fill(&mut t.buf, n, B::T::ZERO)?;
        }
        Ok(())
    }

    /// Total number of scalars.
    pub fn numel(&self) -> usize {
        self.tensors.iter().map(|t| t.numel()).sum()
    }

    /// Host copies of every tensor, in f64.
    pub fn to_host(&self, be: &B) -> Result<Vec<HostTensor>> {
        self.tensors
            .iter()
            .map(|t| {
                let data = be.download(&t.buf)?.iter().take(t.numel()).map(|x| x.to_f64()).collect();
                Ok(HostTensor { name: t.name.clone(), shape: t.shape.clone(), data })
            })
            .collect()
    }

    /// Overwrites tensor `name` from host data; the length must match its shape exactly.
    pub fn load(&mut self, be: &B, name: &str, data: &[f64]) -> Result<()> {
        let k = self
            .index(name)
            .ok_or_else(|| Error::invalid("ParamSet::load", "name", format!("no tensor named `{name}`")))?;
        let t = &mut self.tensors[k];
        if data.len() != t.numel() {
            return Err(Error::shape(
                "ParamSet::load",
                "data",
                format!("{:?} = {} elements for `{name}`", t.shape, t.numel()),
                format!("{} elements", data.len()),
            ));
        }
        let host: Vec<B::T> = data.iter().map(|&x| B::T::from_f64(x)).collect();
        self.generation += 1;
        be.write(&mut t.buf, &host)
    }
}

/// Builds a [`ParamSet`] tensor by tensor, drawing initial values on the host in f64 from one
/// seeded generator, so `f32` and `f64` models built with the same seed hold the same values
/// (up to rounding) and the CPU and a GPU start from identical weights.
pub struct ParamBuilder<'a, B: Backend> {
    be: &'a B,
    rng: &'a mut Rng,
    tensors: Vec<Tensor<B>>,
}

impl<'a, B: Backend> ParamBuilder<'a, B> {
    pub fn new(be: &'a B, rng: &'a mut Rng) -> Self {
        ParamBuilder { be, rng, tensors: Vec::new() }
    }

    /// Adds a tensor and returns its index.
    pub fn add(&mut self, name: impl Into<String>, shape: &[usize], role: Role, init: Init) -> Result<usize> {
        let name = name.into();
        if shape.contains(&0) {
            return Err(Error::invalid(
                "ParamBuilder::add",
                "shape",
                format!("`{name}` has a zero dimension: {shape:?}"),
            ));
        }
        let host: Vec<B::T> = init.sample(shape, self.rng).into_iter().map(B::T::from_f64).collect();
        let buf = self.be.upload(&host)?;
        self.tensors.push(Tensor { name, shape: shape.to_vec(), role, buf });
        Ok(self.tensors.len() - 1)
    }

    pub fn finish(self) -> ParamSet<B> {
        ParamSet { tensors: self.tensors, generation: 0 }
    }
}

/// Most embedding tables indexed by the same ids (NeuMF has two: GMF's and the MLP's).
pub const MAX_SIDE_TABLES: usize = 4;

/// The embedding tables of one id side, borrowed mutably (see [`ParamSet::side_tables_mut`]).
pub struct SideTables<'a, B: Backend> {
    slots: [Option<(usize, &'a mut B::Buf)>; MAX_SIDE_TABLES],
}

impl<B: Backend> Default for SideTables<'_, B> {
    fn default() -> Self {
        SideTables { slots: std::array::from_fn(|_| None) }
    }
}

impl<'a, B: Backend> SideTables<'a, B> {
    /// Adds tensor `k`'s buffer to the side's tables.
    pub(crate) fn insert(&mut self, k: usize, buf: &'a mut B::Buf) -> Result<()> {
        let slot = self.slots.iter_mut().find(|s| s.is_none()).ok_or_else(|| {
            Error::invalid("params", "tables", format!("more than {MAX_SIDE_TABLES} embedding tables per id side"))
        })?;
        *slot = Some((k, buf));
        Ok(())
    }

    /// The buffer of tensor `k`, which must be one of this side's tables.
    pub fn get(&mut self, k: usize) -> Result<&mut B::Buf> {
        self.slots.iter_mut().flatten().find(|(i, _)| *i == k).map(|(_, buf)| &mut **buf).ok_or_else(|| {
            Error::invalid("params", "tables", format!("tensor {k} is not an embedding table of this side"))
        })
    }
}
