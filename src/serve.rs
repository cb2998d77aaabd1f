//! The HTTP JSON API of `ncf serve` (axum): a trained model's endpoints as a [`Router`], so the
//! binary serves it, the tests drive it, and the fuzz target feeds it raw HTTP.
//!
//! Endpoints: `GET /health`; `GET /users/{id}/recommendations?k=` (with the user's history;
//! unknown users get the popularity list, flagged); `POST /users/recommendations` (a new user
//! from liked items, folded in); `GET /items/{id}/similar?k=`; `POST /score` with
//! `{"pairs": [[user, item], …]}`; `GET /` (the demo page); `GET /openapi.json`. Every bad
//! request gets a 4xx JSON `{"error": …}`: bad ids, `k` outside 1..=1000, malformed JSON,
//! bodies over 64 KiB, more than 10,000 pairs.

use crate::Recommender;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ncf_data::movielens::Movie;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

/// The largest request body.
pub const MAX_BODY: usize = 64 * 1024;
/// The most pairs one `POST /score` may ask for.
pub const MAX_PAIRS: usize = 10_000;
/// The most liked items of one folded-in user.
pub const MAX_LIKED: usize = 1_000;

/// Movie metadata by raw id (empty without a file).
pub fn load_meta(path: Option<&std::path::Path>) -> crate::Result<HashMap<u64, Movie>> {
    let Some(p) = path else { return Ok(HashMap::new()) };
    Ok(ncf_data::load_item_meta(p)?.into_iter().map(|m| (m.id, m)).collect())
}

/// One item as JSON: its raw id, and the metadata when there is some.
pub fn meta_json(raw: u64, meta: &HashMap<u64, Movie>) -> Value {
    let mut v = json!({ "item": raw });
    if let Some(m) = meta.get(&raw) {
        v["title"] = m.title.clone().into();
        v["year"] = m.year.into();
        v["genres"] = m.genres.clone().into();
    }
    v
}

/// A scored item as JSON: [`meta_json`] and its score.
pub fn item_json(&(raw, score): &(u64, f32), meta: &HashMap<u64, Movie>) -> Value {
    let mut v = meta_json(raw, meta);
    v["score"] = score.into();
    v
}

/// One loaded model (every query takes `&self`: requests share it without locks).
pub struct Loaded {
    rec: Recommender<u64, u64>,
}

/// What the handlers share: the model (swapped whole on reload), the item metadata and the
/// checkpoint's path.
pub struct AppState {
    pub model: RwLock<Arc<Loaded>>,
    pub meta: HashMap<u64, Movie>,
    pub path: PathBuf,
}

impl AppState {
    /// The state of a server of the checkpoint at `path`.
    pub fn new(loaded: Loaded, meta: HashMap<u64, Movie>, path: PathBuf) -> Shared {
        Arc::new(AppState { model: RwLock::new(Arc::new(loaded)), meta, path })
    }
}

pub type Shared = Arc<AppState>;

/// A 4xx/5xx answer with a JSON body `{"error": message}`.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

fn not_found(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::NOT_FOUND, msg.into())
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

fn from_json_rejection(r: JsonRejection) -> ApiError {
    ApiError(r.status(), r.body_text())
}

/// Loads the checkpoint at `path` for serving.
pub fn load(path: &std::path::Path) -> crate::Result<Loaded> {
    let rec = Recommender::open(path)?;
    // The item vectors for `similar`, made now rather than on the first query.
    if let Some(first) = rec.items().first() {
        rec.similar_items(first, 1)?;
    }
    Ok(Loaded { rec })
}

/// `k` from the query string: 1..=1000, default 10.
fn k_of(q: &Result<Query<HashMap<String, String>>, QueryRejection>) -> Result<usize, ApiError> {
    let q = q.as_ref().map_err(|e| bad(e.body_text()))?;
    match q.get("k") {
        None => Ok(10),
        Some(v) => match v.parse::<usize>() {
            Ok(k) if (1..=1000).contains(&k) => Ok(k),
            _ => Err(bad(format!("k must be an integer in 1..=1000, got `{v}`"))),
        },
    }
}

fn id_of(p: Result<Path<String>, PathRejection>, what: &str) -> Result<u64, ApiError> {
    let Path(s) = p.map_err(|e| bad(e.body_text()))?;
    s.parse::<u64>().map_err(|_| bad(format!("{what} id must be a non-negative integer, got `{s}`")))
}

fn model(st: &Shared) -> Arc<Loaded> {
    st.model.read().map(|m| m.clone()).unwrap_or_else(|e| e.into_inner().clone())
}

/// Runs `f` on the model off the async threads.
async fn with_model<T: Send + 'static>(
    m: Arc<Loaded>,
    f: impl FnOnce(&Recommender<u64, u64>) -> crate::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(move || f(&m.rec)).await.map_err(internal)?.map_err(internal)
}

async fn health(State(st): State<Shared>) -> Json<Value> {
    let m = model(&st);
    let (users, items) = (m.rec.users().len(), m.rec.items().len());
    Json(json!({ "status": "ok", "users": users, "items": items, "model": st.path.display().to_string() }))
}

async fn user_recs(
    State(st): State<Shared>,
    p: Result<Path<String>, PathRejection>,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let (raw, k) = (id_of(p, "user")?, k_of(&q)?);
    let m = model(&st);
    if !m.rec.contains_user(&raw) {
        let items = m.rec.popular(k);
        let items: Vec<Value> = items.iter().map(|s| item_json(s, &st.meta)).collect();
        return Ok(Json(json!({ "user": raw, "fallback": "popularity", "history": [], "items": items })));
    }
    let (recs, history) =
        with_model(m, move |r| Ok((r.user_recs(&raw, k)?, r.history(&raw).unwrap_or_default()))).await?;
    let history: Vec<Value> = history.iter().map(|&r| meta_json(r, &st.meta)).collect();
    let items: Vec<Value> = recs.iter().map(|s| item_json(s, &st.meta)).collect();
    Ok(Json(json!({ "user": raw, "history": history, "items": items })))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FoldIn {
    items: Vec<u64>,
    #[serde(default = "ten")]
    k: usize,
}

fn ten() -> usize {
    10
}

async fn fold_in(State(st): State<Shared>, body: Result<Json<FoldIn>, JsonRejection>) -> Result<Json<Value>, ApiError> {
    let Json(req) = body.map_err(from_json_rejection)?;
    if !(1..=1000).contains(&req.k) {
        return Err(bad(format!("k must be in 1..=1000, got {}", req.k)));
    }
    if req.items.is_empty() || req.items.len() > MAX_LIKED {
        return Err(bad(format!("items must list 1 to {MAX_LIKED} item ids, got {}", req.items.len())));
    }
    let m = model(&st);
    if let Some(raw) = req.items.iter().find(|i| !m.rec.contains_item(i)) {
        return Err(not_found(format!("item {raw} is not in the model")));
    }
    let (k, liked) = (req.k, req.items.clone());
    let recs = with_model(m, move |r| r.recs_for_items(&liked, k, 42)).await?;
    let items: Vec<Value> = recs.iter().map(|s| item_json(s, &st.meta)).collect();
    Ok(Json(json!({ "liked": req.items, "folded_in": true, "items": items })))
}

async fn similar(
    State(st): State<Shared>,
    p: Result<Path<String>, PathRejection>,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let (raw, k) = (id_of(p, "item")?, k_of(&q)?);
    let m = model(&st);
    if !m.rec.contains_item(&raw) {
        return Err(not_found(format!("item {raw} is not in the model")));
    }
    let near = m.rec.similar_items(&raw, k).map_err(internal)?;
    let items: Vec<Value> = near.iter().map(|n| item_json(n, &st.meta)).collect();
    Ok(Json(json!({ "item": meta_json(raw, &st.meta), "similar": items })))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ScoreReq {
    pairs: Vec<(u64, u64)>,
}

async fn score(State(st): State<Shared>, body: Result<Json<ScoreReq>, JsonRejection>) -> Result<Json<Value>, ApiError> {
    let Json(req) = body.map_err(from_json_rejection)?;
    if req.pairs.len() > MAX_PAIRS {
        return Err(ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("at most {MAX_PAIRS} pairs, got {}", req.pairs.len()),
        ));
    }
    let m = model(&st);
    for (u, i) in &req.pairs {
        if !m.rec.contains_user(u) {
            return Err(not_found(format!("user {u} is not in the model")));
        }
        if !m.rec.contains_item(i) {
            return Err(not_found(format!("item {i} is not in the model")));
        }
    }
    let pairs = req.pairs;
    let scores = with_model(m, move |r| r.score_pairs(&pairs)).await?;
    Ok(Json(json!({ "scores": scores })))
}

async fn page() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], include_str!("serve_page.html"))
}

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], include_str!("serve_openapi.json"))
}

async fn fallback() -> ApiError {
    not_found("no such endpoint (see /openapi.json)")
}

/// The routes.
pub fn app(st: Shared) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/health", get(health))
        .route("/openapi.json", get(openapi))
        .route("/users/{id}/recommendations", get(user_recs))
        .route("/users/recommendations", post(fold_in))
        .route("/items/{id}/similar", get(similar))
        .route("/score", post(score))
        .fallback(fallback)
        .method_not_allowed_fallback(|| async { ApiError(StatusCode::METHOD_NOT_ALLOWED, "method not allowed".into()) })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(st)
}
