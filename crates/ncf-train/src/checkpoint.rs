//! Checkpoints: one `.safetensors` file holding every parameter (f32, little-endian, named as
//! in the model: `gmf_user_embedding`, `mlp_0_weight`, …) and, in its metadata header, the
//! model configuration, the training configuration and the run's metrics as JSON strings.
//!
//! Ids: when the data came with raw ids (a MovieLens source, a split written by
//! `ncf data split`, the canonical ML-1M split's `item_id_map.tsv`), the metadata holds
//! `user_ids` / `item_ids`, JSON arrays of the raw id of each dense id, and `id_map = "raw"`;
//! otherwise `id_map = "identity"` (dense ids are the only ids). The users' training items
//! (what `ncf recommend` must not recommend again) are two U32 tensors, `seen/offsets`
//! (users + 1) and `seen/items`, a CSR over dense ids. Written atomically: a temporary file in the
//! same folder, then a rename, so a crash never leaves half a checkpoint.

use crate::{Result, TrainError};
use ncf_core::Backend;
use ncf_data::{IdMap, UserItems};

/// Tensors under this prefix are U32 (the users' training items), not F32 weights.
const SEEN: &str = "seen/";
const SEEN_OFFSETS: &str = "seen/offsets";
const SEEN_ITEMS: &str = "seen/items";
use ncf_model::{AnyModel, HostTensor, Model, ModelConfig, ModelKind};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

/// The most activation floats (f32: 1 GiB) a model built from a checkpoint may ask for; see
/// [`Checkpoint::model`].
pub const MAX_WORKSPACE_FLOATS: usize = 1 << 28;

/// What a checkpoint needs to rebuild its model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    pub kind: String,
    pub users: usize,
    pub items: usize,
    pub factors: usize,
    pub layers: Vec<usize>,
}

impl ModelSpec {
    pub fn of(cfg: &ModelConfig) -> Self {
        ModelSpec {
            kind: cfg.kind.to_string(),
            users: cfg.users,
            items: cfg.items,
            factors: cfg.factors,
            layers: cfg.layers.clone(),
        }
    }
    pub fn config(&self) -> Result<ModelConfig> {
        let kind: ModelKind = self.kind.parse()?;
        Ok(ModelConfig {
            factors: self.factors,
            layers: self.layers.clone(),
            ..ModelConfig::new(kind, self.users, self.items)
        })
    }
}

/// A loaded (or about to be saved) checkpoint.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    pub spec: ModelSpec,
    pub tensors: Vec<HostTensor>,
    /// Extra JSON documents (`train_config`, `summary`, …), by name.
    pub metadata: HashMap<String, String>,
}

/// Stores the id maps in checkpoint metadata (see the module doc).
pub fn put_id_maps(meta: &mut HashMap<String, String>, users: Option<&IdMap>, items: Option<&IdMap>) {
    let arr = |m: &IdMap| serde_json::to_string(m.raw_ids()).unwrap_or_default();
    if let Some(u) = users {
        meta.insert("user_ids".into(), arr(u));
    }
    if let Some(i) = items {
        meta.insert("item_ids".into(), arr(i));
    }
    let kind = if users.is_some() || items.is_some() { "raw" } else { "identity" };
    meta.insert("id_map".into(), kind.into());
}

fn ckpt_err(path: &Path, reason: impl Into<String>) -> TrainError {
    TrainError::Checkpoint { path: path.display().to_string(), reason: reason.into() }
}

impl Checkpoint {
    /// Writes the checkpoint to `path`; refuses to replace an existing file unless `force`.
    pub fn save(&self, path: &Path, force: bool) -> Result<()> {
        if path.exists() && !force {
            return Err(ckpt_err(path, "exists; pass --force to overwrite it"));
        }
        let mut bytes: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::with_capacity(self.tensors.len());
        for t in &self.tensors {
            let (dtype, b) = if t.name.starts_with(SEEN) {
                if let Some(x) = t.data.iter().find(|&&x| !(x >= 0.0 && x <= u32::MAX as f64 && x.fract() == 0.0)) {
                    return Err(ckpt_err(path, format!("`{}` holds {x}, not a u32", t.name)));
                }
                (Dtype::U32, t.data.iter().flat_map(|&x| (x as u32).to_le_bytes()).collect())
            } else {
                (Dtype::F32, t.data.iter().flat_map(|&x| (x as f32).to_le_bytes()).collect())
            };
            bytes.push((t.name.clone(), dtype, t.shape.clone(), b));
        }
        let views = bytes
            .iter()
            .map(|(n, d, s, b)| {
                Ok((n.clone(), TensorView::new(*d, s.clone(), b).map_err(|e| ckpt_err(path, e.to_string()))?))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut meta = self.metadata.clone();
        meta.insert("format".into(), "ncf-rs checkpoint v1".into());
        meta.insert("model".into(), serde_json::to_string(&self.spec).map_err(|e| ckpt_err(path, e.to_string()))?);
        meta.entry("id_map".into()).or_insert_with(|| "identity".into());
        let out = safetensors::serialize(views, Some(meta)).map_err(|e| ckpt_err(path, e.to_string()))?;
        // A temporary file beside it, flushed, then renamed over it: a kill at any moment leaves
        // the previous checkpoint or the new one, and a full disk leaves the previous one.
        ncf_data::write_atomic(path, &out, true).map_err(|e| ckpt_err(path, e.to_string()))
    }

    /// Reads a checkpoint written by [`Checkpoint::save`].
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| ckpt_err(path, e.to_string()))?;
        let (_, header) =
            SafeTensors::read_metadata(&bytes).map_err(|e| ckpt_err(path, format!("not a safetensors file: {e}")))?;
        let mut metadata = header.metadata().clone().unwrap_or_default();
        let spec_json = metadata
            .remove("model")
            .ok_or_else(|| ckpt_err(path, "no `model` entry in the metadata: not an ncf-rs checkpoint"))?;
        let spec: ModelSpec =
            serde_json::from_str(&spec_json).map_err(|e| ckpt_err(path, format!("bad `model` metadata: {e}")))?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| ckpt_err(path, e.to_string()))?;
        let mut tensors = Vec::new();
        for (name, view) in st.tensors() {
            let want = if name.starts_with(SEEN) { Dtype::U32 } else { Dtype::F32 };
            if view.dtype() != want {
                return Err(ckpt_err(path, format!("tensor `{name}` is {:?}, expected {want:?}", view.dtype())));
            }
            let word = |c: &[u8]| [c[0], c[1], c[2], c[3]];
            let data = match want {
                Dtype::U32 => view.data().chunks_exact(4).map(|c| u32::from_le_bytes(word(c)) as f64).collect(),
                _ => view.data().chunks_exact(4).map(|c| f32::from_le_bytes(word(c)) as f64).collect(),
            };
            tensors.push(HostTensor { name, shape: view.shape().to_vec(), data });
        }
        let ckpt = Checkpoint { spec, tensors, metadata };
        ckpt.check(path)?;
        Ok(ckpt)
    }

    /// What [`Checkpoint::load`] checks before anything trusts the file (it may come from
    /// anyone): the model spec is one a model can be built from, the weights it needs are no
    /// more than the file holds (so a spec declaring a huge table is refused before a table is
    /// allocated), and every stored value is finite.
    fn check(&self, path: &Path) -> Result<()> {
        let cfg = self.spec.config().map_err(|e| ckpt_err(path, format!("bad `model` metadata: {e}")))?;
        cfg.validate().map_err(|e| ckpt_err(path, format!("bad `model` metadata: {e}")))?;
        let stored: usize = self.tensors.iter().filter(|t| !t.name.contains('/')).map(|t| t.data.len()).sum();
        let describe = || {
            let s = &self.spec;
            format!(
                "{} with {} users, {} items, factors {}, layers {:?}",
                s.kind, s.users, s.items, s.factors, s.layers
            )
        };
        match cfg.weight_count() {
            Some(need) if need <= stored => {}
            need => {
                let need = need.map_or("more than 2^64".to_string(), |n| n.to_string());
                return Err(ckpt_err(
                    path,
                    format!("its model spec ({}) needs {need} weights, but the file holds {stored}", describe()),
                ));
            }
        }
        for t in &self.tensors {
            if let Some(k) = t.data.iter().position(|x| !x.is_finite()) {
                return Err(ckpt_err(path, format!("tensor `{}` holds {} at element {k}", t.name, t.data[k])));
            }
        }
        Ok(())
    }

    /// The saved id maps (users, items); `None` where the checkpoint has none.
    pub fn id_maps(&self, path: &Path) -> Result<(Option<IdMap>, Option<IdMap>)> {
        let get = |key: &str| -> Result<Option<IdMap>> {
            let Some(json) = self.metadata.get(key) else { return Ok(None) };
            let raw: Vec<u64> =
                serde_json::from_str(json).map_err(|e| ckpt_err(path, format!("bad `{key}` metadata: {e}")))?;
            IdMap::from_dense_order(raw).map(Some).ok_or_else(|| ckpt_err(path, format!("`{key}` repeats a raw id")))
        };
        Ok((get("user_ids")?, get("item_ids")?))
    }

    /// Stores each user's training items (`seen/offsets`, `seen/items`).
    pub fn put_seen(&mut self, seen: &UserItems) {
        self.tensors.retain(|t| !t.name.starts_with(SEEN));
        let offsets = seen.offsets.iter().map(|&o| o as f64).collect();
        self.tensors.push(HostTensor { name: SEEN_OFFSETS.into(), shape: vec![seen.offsets.len()], data: offsets });
        let items = seen.items.iter().map(|&i| i as f64).collect();
        self.tensors.push(HostTensor { name: SEEN_ITEMS.into(), shape: vec![seen.items.len()], data: items });
    }

    /// Each user's training items, checked against the model's sizes; `None` for a checkpoint
    /// written before they were stored.
    pub fn seen(&self, path: &Path) -> Result<Option<UserItems>> {
        let find = |name: &str| self.tensors.iter().find(|t| t.name == name);
        let (Some(off), Some(items)) = (find(SEEN_OFFSETS), find(SEEN_ITEMS)) else { return Ok(None) };
        let (users, n_items) = (self.spec.users, self.spec.items);
        if off.data.len() != users + 1 {
            return Err(ckpt_err(path, format!("`{SEEN_OFFSETS}` has {} entries for {users} users", off.data.len())));
        }
        let offsets: Vec<usize> = off.data.iter().map(|&x| x as usize).collect();
        if offsets[0] != 0 || offsets.windows(2).any(|w| w[0] > w[1]) || offsets[users] != items.data.len() {
            return Err(ckpt_err(path, format!("`{SEEN_OFFSETS}` is not a CSR over {} items", items.data.len())));
        }
        if let Some(&bad) = items.data.iter().find(|&&i| i as usize >= n_items) {
            return Err(ckpt_err(path, format!("`{SEEN_ITEMS}` holds item {bad} of a model with {n_items} items")));
        }
        let items = items.data.iter().map(|&i| i as u32).collect();
        Ok(Some(UserItems { n_users: users, n_items, offsets, items }))
    }

    /// Builds the model the checkpoint describes, with its weights, on `be`, with workspaces for
    /// `max_batch` rows. A spec whose towers would need more than [`MAX_WORKSPACE_FLOATS`] of
    /// activations for that many rows is refused first ([`ModelConfig::floats_per_row`]): the
    /// weight check bounds the tables by the file's size, not the workspaces, which grow with
    /// the rows.
    pub fn model<B: Backend>(&self, be: &B, max_batch: usize, path: &Path) -> Result<AnyModel<B>> {
        let cfg = self.spec.config()?;
        let need = cfg.floats_per_row().and_then(|f| f.checked_mul(max_batch));
        if need.is_none_or(|n| n > MAX_WORKSPACE_FLOATS) {
            let mb = need.map_or("more than 2^64 bytes".to_string(), |n| format!("about {} MB", n / (1 << 18)));
            return Err(ckpt_err(
                path,
                format!(
                    "its model spec (layers {:?}, factors {}) needs {mb} of activations for {max_batch} rows, past the \
                     limit of {} MB (MAX_WORKSPACE_FLOATS)",
                    self.spec.layers,
                    self.spec.factors,
                    MAX_WORKSPACE_FLOATS / (1 << 18)
                ),
            ));
        }
        let mut m = AnyModel::new(be, &cfg, max_batch, &mut ncf_core::rng::seeded(0, 0))?;
        let (params, _) = m.params_and_grads();
        let want: Vec<(String, Vec<usize>)> =
            params.tensors.iter().map(|t| (t.name.clone(), t.shape.clone())).collect();
        for (name, want) in &want {
            let t = self
                .tensors
                .iter()
                .find(|t| &t.name == name)
                .ok_or_else(|| ckpt_err(path, format!("missing tensor `{name}` for a {} model", self.spec.kind)))?;
            if &t.shape != want {
                return Err(ckpt_err(
                    path,
                    format!("tensor `{name}` has shape {:?}, but its model spec needs {want:?}", t.shape),
                ));
            }
            params.load(be, name, &t.data).map_err(|e| ckpt_err(path, e.to_string()))?;
        }
        Ok(m)
    }
}

/// What `ncf train --resume` needs beyond the selected weights, stored in the same file:
/// tensors `resume/param/NAME` (the weights after the last epoch), `resume/optim/NAME.m` and
/// `resume/optim/NAME.v` (optimizer state), and metadata `resume` = `{"t": steps,
/// "best_valid": index}`; the epoch reports are the `epochs` metadata.
pub struct ResumeState {
    pub epochs: Vec<crate::EpochReport>,
    pub best_valid: Option<usize>,
    pub current: Vec<HostTensor>,
    pub optim: Vec<HostTensor>,
    /// Optimizer steps taken.
    pub t: u64,
}

#[derive(Serialize, Deserialize)]
struct ResumeMeta {
    t: u64,
    best_valid: Option<usize>,
}

const PARAM: &str = "resume/param/";
const OPTIM: &str = "resume/optim/";

impl ResumeState {
    pub fn write_into(self, ckpt: &mut Checkpoint) {
        let meta = ResumeMeta { t: self.t, best_valid: self.best_valid };
        ckpt.metadata.insert("resume".into(), serde_json::to_string(&meta).unwrap_or_default());
        ckpt.metadata.insert("epochs".into(), serde_json::to_string(&self.epochs).unwrap_or_default());
        for (prefix, set) in [(PARAM, self.current), (OPTIM, self.optim)] {
            ckpt.tensors.extend(set.into_iter().map(|t| HostTensor { name: format!("{prefix}{}", t.name), ..t }));
        }
    }

    pub fn read(ckpt: &Checkpoint, path: &Path) -> Result<Self> {
        let meta: ResumeMeta = ckpt
            .metadata
            .get("resume")
            .ok_or_else(|| ckpt_err(path, "has no resume state (it was not written by `ncf train --save`)"))
            .and_then(|j| serde_json::from_str(j).map_err(|e| ckpt_err(path, format!("bad `resume` metadata: {e}"))))?;
        let epochs: Vec<crate::EpochReport> =
            ckpt.metadata.get("epochs").ok_or_else(|| ckpt_err(path, "no `epochs` metadata")).and_then(|j| {
                serde_json::from_str(j).map_err(|e| ckpt_err(path, format!("bad `epochs` metadata: {e}")))
            })?;
        if meta.best_valid.is_some_and(|b| b >= epochs.len()) {
            return Err(ckpt_err(path, "resume state names an epoch it has no report for"));
        }
        let strip = |prefix: &str| -> Vec<HostTensor> {
            ckpt.tensors
                .iter()
                .filter_map(|t| Some(HostTensor { name: t.name.strip_prefix(prefix)?.to_string(), ..t.clone() }))
                .collect()
        };
        Ok(ResumeState { epochs, best_valid: meta.best_valid, current: strip(PARAM), optim: strip(OPTIM), t: meta.t })
    }
}

impl Checkpoint {
    /// The training configuration the checkpoint was written with.
    pub fn train_config(&self, path: &Path) -> Result<crate::TrainConfig> {
        let j = self.metadata.get("train_config").ok_or_else(|| ckpt_err(path, "no `train_config` metadata"))?;
        serde_json::from_str(j).map_err(|e| ckpt_err(path, format!("bad `train_config` metadata: {e}")))
    }
}
