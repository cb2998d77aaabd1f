//! # ncf
//!
//! Neural Collaborative Filtering from scratch, as a library: fit a recommender on
//! `(user, item)` pairs with ids of any hashable type, then ask it what a user should see next,
//! which items are alike, and how much a user would like an item.
//!
//! ```
//! use ncf::Recommender;
//!
//! // Who watched what (any id type: strings here). Input order stands for time: each user's
//! // last pair is held out to report HR@10 while training.
//! let mut pairs = Vec::new();
//! for u in 0..60 {
//!     for i in 0..12 {
//!         let item = (u % 3) * 12 + i; // three tastes, twelve movies each
//!         pairs.push((format!("user{u}"), format!("movie{item}")));
//!     }
//! }
//! // Progress: each epoch's loss and HR@10 on the validation holdout (one pair per user, which
//! // also picks the epoch kept and, with `patience`, stops training early).
//! let (tx, rx) = std::sync::mpsc::channel();
//! let rec = Recommender::builder()
//!     .model("gmf")
//!     .factors(8)
//!     .epochs(3)
//!     .patience(2)
//!     .seed(7)
//!     .on_epoch(move |r| tx.send((r.epoch, r.loss, r.valid_hr)).unwrap())
//!     .fit(&pairs)?;
//! let epochs: Vec<(usize, f64, f64)> = rx.try_iter().collect();
//! assert_eq!(epochs.len(), 3);
//! assert!(epochs.iter().all(|&(_, loss, hr)| loss.is_finite() && (0.0..=1.0).contains(&hr)));
//! let recs = rec.user_recs(&"user1".to_string(), 5)?;
//! assert_eq!(recs.len(), 5);
//! // Nothing the user already has.
//! assert!(recs.iter().all(|(m, _)| !pairs.contains(&("user1".to_string(), m.clone()))));
//! let near = rec.similar_items(&"movie0".to_string(), 3)?;
//! assert_eq!(near.len(), 3);
//! # Ok::<(), ncf::RecError>(())
//! ```
//!
//! Save and load keep the ids: `rec.save(path)` writes the safetensors checkpoint `ncf
//! recommend` also reads (with the ids as JSON in its metadata), `Recommender::load(path)`
//! reads it back.

use ncf_train::Checkpoint;
use ncf_train::infer::Scorer;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::hash::Hash;
use std::path::Path;

pub use ncf_train::EpochReport;

pub mod serve;

/// What can go wrong, with the reason.
#[derive(Debug, thiserror::Error)]
pub enum RecError {
    #[error(transparent)]
    Train(#[from] ncf_train::TrainError),
    #[error(transparent)]
    Data(#[from] ncf_data::DataError),
    #[error(transparent)]
    Engine(#[from] ncf_core::Error),
    /// An id the model was not fitted on.
    #[error("{0} is not in the model")]
    Unknown(String),
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, RecError>;

/// The progress callback: called after every epoch.
type OnEpoch = Box<dyn FnMut(&EpochReport) + Send>;

/// How to fit: the model and its size, the training length, the seed, the threads.
pub struct RecommenderBuilder {
    cfg: ncf_train::TrainConfig,
    model: String,
    threads: Option<usize>,
    on_epoch: Option<OnEpoch>,
}

impl RecommenderBuilder {
    /// `gmf`, `mlp`, `neumf` (the default) or `mf`.
    pub fn model(mut self, m: &str) -> Self {
        self.model = m.to_string();
        self
    }
    /// GMF / MF embedding width.
    pub fn factors(mut self, f: usize) -> Self {
        self.cfg.factors = f;
        self
    }
    /// MLP widths: the concatenated embedding width, then each dense layer's.
    pub fn layers(mut self, l: &[usize]) -> Self {
        self.cfg.layers = l.to_vec();
        self
    }
    pub fn epochs(mut self, e: usize) -> Self {
        self.cfg.epochs = e;
        self
    }
    pub fn seed(mut self, s: u64) -> Self {
        self.cfg.seed = s;
        self
    }
    /// Worker threads (default: all cores).
    pub fn threads(mut self, t: usize) -> Self {
        self.threads = Some(t);
        self
    }
    pub fn learning_rate(mut self, lr: f64) -> Self {
        self.cfg.lr = lr;
        self
    }
    pub fn batch(mut self, b: usize) -> Self {
        self.cfg.batch = b;
        self
    }
    /// Early stopping: stop after `p` epochs without a better validation HR@10 (0, the
    /// default: train every epoch). The validation-selected epoch's weights are kept either way.
    pub fn patience(mut self, p: usize) -> Self {
        self.cfg.patience = p;
        self
    }
    /// Negatives sampled per positive pair each epoch (default 4).
    pub fn negatives(mut self, n: usize) -> Self {
        self.cfg.neg = n;
        self
    }
    /// Called after every epoch with its loss and validation/test HR@10 and NDCG@10.
    pub fn on_epoch(mut self, f: impl FnMut(&EpochReport) + Send + 'static) -> Self {
        self.on_epoch = Some(Box::new(f));
        self
    }

    /// Fits on `pairs` (input order stands for time). Each user's last pair is held out as a
    /// test case (with 99 sampled negatives) and one more as a validation case, which picks
    /// the epoch whose weights are kept; users with one pair train on it. Recommendations
    /// leave out every pair given here, held out or not.
    pub fn fit<U, I>(mut self, pairs: &[(U, I)]) -> Result<Recommender<U, I>>
    where
        U: Hash + Eq + Clone,
        I: Hash + Eq + Clone,
    {
        self.cfg.model = <ncf_train::ModelChoice as clap::ValueEnum>::from_str(&self.model, true)
            .map_err(|_| RecError::Invalid(format!("`{}` is not one of gmf, mlp, neumf, mf", self.model)))?;
        let (mut users, mut items) = (Vec::new(), Vec::new());
        let (mut user_index, mut item_index) = (HashMap::new(), HashMap::new());
        let mut ratings = Vec::with_capacity(pairs.len());
        for (t, (u, i)) in pairs.iter().enumerate() {
            let du = *user_index.entry(u.clone()).or_insert_with(|| {
                users.push(u.clone());
                users.len() as u64 - 1
            });
            let di = *item_index.entry(i.clone()).or_insert_with(|| {
                items.push(i.clone());
                items.len() as u64 - 1
            });
            ratings.push(ncf_data::RawRating { user: du, item: di, rating: 1.0, timestamp: t as i64 });
        }
        if users.is_empty() {
            return Err(RecError::Invalid("no pairs to fit on".into()));
        }
        let data = ncf_data::Implicit::from_ratings(&ratings, None);
        let split = ncf_data::leave_latest_out(&data, 99, self.cfg.split_seed).to_ncf_split("fit");
        let prepared = ncf_train::Prepared::from_split(&split, self.cfg.seed);
        let mut pool = rayon::ThreadPoolBuilder::new();
        if let Some(t) = self.threads {
            pool = pool.num_threads(t);
        }
        let pool = pool.build().map_err(|e| RecError::Invalid(e.to_string()))?;
        let mut on_epoch = self.on_epoch.take();
        let cfg = self.cfg;
        let out = pool.install(|| {
            ncf_train::train(&cfg, &prepared, None, |r| {
                if let Some(f) = on_epoch.as_mut() {
                    f(r)
                }
            })
        })?;
        // Dense ids are 0..n in first-appearance order, and the split's id maps are identity
        // over them; every given pair is "seen".
        let dense: Vec<(u32, u32)> = pairs.iter().map(|(u, i)| (user_index[u] as u32, item_index[i] as u32)).collect();
        let seen = ncf_data::UserItems::from_pairs(users.len(), items.len(), &dense);
        let mut ckpt = out.best;
        ckpt.put_seen(&seen);
        Recommender::from_parts(ckpt, users, items)
    }
}

/// Items (or users) with their scores, best first.
pub type Recs<T> = Vec<(T, f32)>;

/// Which ids an [`EmbeddingTable`]'s rows belong to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Users,
    Items,
}

/// One of a model's tables: `rows × width` floats, row-major, row `r` for the `r`-th user or
/// item.
#[derive(Clone, Debug)]
pub struct EmbeddingTable {
    pub name: String,
    pub side: Side,
    pub rows: usize,
    pub width: usize,
    pub data: Vec<f32>,
}

pub use ncf_train::infer::EmbeddingChoice;

impl Recommender<u64, u64> {
    /// Opens a checkpoint written by `ncf train --save` (its ids: the raw ids of the data it
    /// was trained on, from the checkpoint's id maps), or by [`Recommender::save`] with `u64`
    /// ids. What `ncf recommend`, `similar`, `embeddings` and `serve` run on.
    pub fn open(path: &Path) -> Result<Self> {
        let ckpt = Checkpoint::load(path)?;
        if ckpt.metadata.contains_key("recommender_users") {
            return Self::from_saved(ckpt, path);
        }
        let scorer = Scorer::from_checkpoint(&ckpt, path, None)?;
        let users: Vec<u64> = (0..scorer.n_users as u32).map(|u| scorer.raw_user(u)).collect();
        let items: Vec<u64> = (0..scorer.n_items as u32).map(|i| scorer.raw_item(i)).collect();
        Ok(Self::with_scorer(scorer, ckpt, users, items))
    }
}

/// A fitted recommender over user ids `U` and item ids `I`.
pub struct Recommender<U, I> {
    scorer: Scorer,
    /// Normalised item vectors per [`EmbeddingChoice`], made on first use.
    item_vectors: [std::sync::OnceLock<(Vec<f32>, usize)>; 4],
    ckpt: Checkpoint,
    users: Vec<U>,
    items: Vec<I>,
    user_index: HashMap<U, u32>,
    item_index: HashMap<I, u32>,
}

impl Recommender<String, String> {
    /// A builder with the defaults of `ncf train` (NeuMF-8, 20 epochs, batch 256, Adam 0.001).
    pub fn builder() -> RecommenderBuilder {
        RecommenderBuilder {
            cfg: ncf_train::TrainConfig::default(),
            model: "neumf".into(),
            threads: None,
            on_epoch: None,
        }
    }
}

impl<U: Hash + Eq + Clone, I: Hash + Eq + Clone> Recommender<U, I> {
    fn from_parts(ckpt: Checkpoint, users: Vec<U>, items: Vec<I>) -> Result<Self> {
        let scorer = Scorer::from_checkpoint(&ckpt, Path::new("(fitted model)"), None)?;
        Ok(Self::with_scorer(scorer, ckpt, users, items))
    }

    fn with_scorer(scorer: Scorer, ckpt: Checkpoint, users: Vec<U>, items: Vec<I>) -> Self {
        let user_index = users.iter().enumerate().map(|(k, u)| (u.clone(), k as u32)).collect();
        let item_index = items.iter().enumerate().map(|(k, i)| (i.clone(), k as u32)).collect();
        Recommender { scorer, item_vectors: Default::default(), ckpt, users, items, user_index, item_index }
    }

    fn user_of(&self, u: &U) -> Result<u32> {
        self.user_index.get(u).copied().ok_or_else(|| RecError::Unknown("the user".into()))
    }

    fn item_of(&self, i: &I) -> Result<u32> {
        self.item_index.get(i).copied().ok_or_else(|| RecError::Unknown("the item".into()))
    }

    /// The `k` items the user is most likely to want, best first, none of those fitted on
    /// for the user; a user never seen in `fit` is an error (see [`Recommender::popular`]).
    pub fn user_recs(&self, user: &U, k: usize) -> Result<Vec<(I, f32)>> {
        let u = self.user_of(user)?;
        let recs = self.scorer.recommend(&[u], k)?;
        Ok(recs.into_iter().flatten().map(|s| (self.items[s.item as usize].clone(), s.score)).collect())
    }

    /// [`Recommender::user_recs`] for many users at once, scored in parallel (on the current
    /// rayon pool); `None` for a user never seen in `fit`.
    pub fn user_recs_many(&self, users: &[U], k: usize) -> Result<Vec<Option<Recs<I>>>> {
        let dense: Vec<Option<u32>> = users.iter().map(|u| self.user_index.get(u).copied()).collect();
        let known: Vec<u32> = dense.iter().flatten().copied().collect();
        let mut recs = self.scorer.recommend(&known, k)?.into_iter();
        Ok(dense
            .iter()
            .map(|d| {
                d.map(|_| {
                    let r = recs.next().unwrap_or_default();
                    r.into_iter().map(|s| (self.items[s.item as usize].clone(), s.score)).collect()
                })
            })
            .collect())
    }

    /// The items fitted on for `user` (never recommended to them), or `None` for a user never
    /// seen in `fit`.
    pub fn history(&self, user: &U) -> Option<Vec<I>> {
        let u = *self.user_index.get(user)?;
        Some(self.scorer.seen.of(u as usize).iter().map(|&i| self.items[i as usize].clone()).collect())
    }

    /// Whether `fit` saw the user.
    pub fn contains_user(&self, user: &U) -> bool {
        self.user_index.contains_key(user)
    }

    /// Whether `fit` saw the item.
    pub fn contains_item(&self, item: &I) -> bool {
        self.item_index.contains_key(item)
    }

    /// The `k` users most likely to want the item (who do not have it yet), best first.
    pub fn item_recs(&self, item: &I, k: usize) -> Result<Vec<(U, f32)>> {
        let i = self.item_of(item)?;
        let pairs: Vec<(u32, u32)> = (0..self.users.len() as u32)
            .filter(|&u| !self.scorer.seen.contains(u as usize, i))
            .map(|u| (u, i))
            .collect();
        let scores = self.scorer.score_pairs(&pairs)?;
        let cand: Vec<(u32, f32)> = pairs.iter().zip(scores).map(|(&(u, _), s)| (u, s)).collect();
        Ok(ncf_train::infer::top_k(cand, k).into_iter().map(|(u, s)| (self.users[u as usize].clone(), s)).collect())
    }

    /// Recommendations for a new user from a few items they like (folding in: that user's
    /// embedding is fitted to the items with everything else frozen; see
    /// `ncf_train::infer::Scorer::fold_in`), best first, the given items left out.
    pub fn recs_for_items(&self, liked: &[I], k: usize, seed: u64) -> Result<Vec<(I, f32)>> {
        let dense = liked.iter().map(|i| self.item_of(i)).collect::<Result<Vec<u32>>>()?;
        let recs = self.scorer.fold_in(&dense, k, seed)?;
        Ok(recs.into_iter().map(|s| (self.items[s.item as usize].clone(), s.score)).collect())
    }

    /// The `k` most popular items (by pairs fitted on): what a new user gets.
    pub fn popular(&self, k: usize) -> Vec<(I, f32)> {
        self.scorer.popular(k).into_iter().map(|s| (self.items[s.item as usize].clone(), s.score)).collect()
    }

    /// The `k` items nearest `item` by cosine similarity of their embeddings (GMF's and the
    /// MLP's together where the model has both: see [`EmbeddingChoice`]).
    pub fn similar_items(&self, item: &I, k: usize) -> Result<Vec<(I, f32)>> {
        self.similar_items_in(item, k, EmbeddingChoice::Auto)
    }

    /// [`Recommender::similar_items`] in the embedding `which`. The normalised item vectors
    /// are computed on the first query for each choice and kept.
    pub fn similar_items_in(&self, item: &I, k: usize, which: EmbeddingChoice) -> Result<Vec<(I, f32)>> {
        let i = self.item_of(item)?;
        let slot = &self.item_vectors[which as usize];
        let v = match slot.get() {
            Some(v) => v,
            None => {
                let v = self.scorer.item_vectors(which)?;
                slot.get_or_init(|| v)
            }
        };
        let near = self.scorer.similar(v, i, k)?;
        Ok(near.into_iter().map(|s| (self.items[s.item as usize].clone(), s.score)).collect())
    }

    /// The `k` users nearest `user` by cosine similarity of their embeddings.
    pub fn similar_users(&self, user: &U, k: usize) -> Result<Vec<(U, f32)>> {
        let u = self.user_of(user)?;
        let v = self.scorer.user_vectors(EmbeddingChoice::Auto)?;
        let near = ncf_train::infer::nearest(&v, u, k);
        Ok(near.into_iter().map(|(j, s)| (self.users[j as usize].clone(), s)).collect())
    }

    /// The model's score (a logit: higher is likelier) of the pair.
    pub fn score(&self, user: &U, item: &I) -> Result<f32> {
        Ok(self.score_pairs(std::slice::from_ref(&(user.clone(), item.clone())))?[0])
    }

    /// The model's score of each pair, in one batched pass.
    pub fn score_pairs(&self, pairs: &[(U, I)]) -> Result<Vec<f32>> {
        let dense = pairs.iter().map(|(u, i)| Ok((self.user_of(u)?, self.item_of(i)?))).collect::<Result<Vec<_>>>()?;
        Ok(self.scorer.score_pairs(&dense)?)
    }

    /// The model's embedding tables (and MF's bias columns), rows in the order of
    /// [`Recommender::users`] or [`Recommender::items`].
    pub fn embedding_tables(&self) -> Vec<EmbeddingTable> {
        self.ckpt
            .tensors
            .iter()
            .filter(|t| !t.name.contains('/')) // resume/…: the last epoch's weights, not the kept ones
            .filter_map(|t| {
                let side = match t.name.as_str() {
                    n if n.ends_with("_user_embedding") || n == "user_bias" => Side::Users,
                    n if n.ends_with("_item_embedding") || n == "item_bias" => Side::Items,
                    _ => return None,
                };
                let rows = if side == Side::Users { self.users.len() } else { self.items.len() };
                let width = t.data.len().checked_div(rows).unwrap_or(0);
                Some(EmbeddingTable {
                    name: t.name.clone(),
                    side,
                    rows,
                    width,
                    data: t.data.iter().map(|&x| x as f32).collect(),
                })
            })
            .collect()
    }

    /// The fitted users and items, in dense-id order.
    pub fn users(&self) -> &[U] {
        &self.users
    }
    pub fn items(&self) -> &[I] {
        &self.items
    }
}

impl<U, I> Recommender<U, I>
where
    U: Hash + Eq + Clone + Serialize + DeserializeOwned,
    I: Hash + Eq + Clone + Serialize + DeserializeOwned,
{
    /// Writes the checkpoint (weights, each user's items, the ids as JSON) to `path`,
    /// atomically; an existing file is replaced only with `force`.
    pub fn save(&self, path: &Path, force: bool) -> Result<()> {
        let mut ckpt = self.ckpt.clone();
        let bad = |e: serde_json::Error| RecError::Invalid(format!("ids that JSON cannot hold: {e}"));
        ckpt.metadata.insert("recommender_users".into(), serde_json::to_string(&self.users).map_err(bad)?);
        ckpt.metadata.insert("recommender_items".into(), serde_json::to_string(&self.items).map_err(bad)?);
        Ok(ckpt.save(path, force)?)
    }

    /// Reads a checkpoint written by [`Recommender::save`].
    pub fn load(path: &Path) -> Result<Self> {
        Self::from_saved(Checkpoint::load(path)?, path)
    }

    /// [`Recommender::load`] of a checkpoint already read from `path`.
    fn from_saved(ckpt: Checkpoint, path: &Path) -> Result<Self> {
        let get = |key: &str| {
            ckpt.metadata.get(key).ok_or_else(|| {
                RecError::Invalid(format!(
                    "{}: no `{key}` in the metadata (not saved by Recommender::save)",
                    path.display()
                ))
            })
        };
        let bad = |e: serde_json::Error| RecError::Invalid(format!("{}: bad ids: {e}", path.display()));
        let users: Vec<U> = serde_json::from_str(get("recommender_users")?).map_err(bad)?;
        let items: Vec<I> = serde_json::from_str(get("recommender_items")?).map_err(bad)?;
        if (users.len(), items.len()) != (ckpt.spec.users, ckpt.spec.items) {
            return Err(RecError::Invalid(format!("{}: the ids do not match the model's sizes", path.display())));
        }
        Recommender::from_parts(ckpt, users, items)
    }
}
