//! `ncf serve`: a trained model behind an HTTP JSON API (the routes are the library's
//! [`ncf::serve`]), with a demo page. SIGTERM or Ctrl-C stops it gracefully; SIGHUP (or, with
//! `--reload`, a change of the file) reloads the checkpoint: requests in flight finish on the
//! old model, later ones get the new one.

use anyhow::{Context, Result};
use ncf::serve::{AppState, Shared, app, load, load_meta};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(clap::Args)]
pub struct ServeArgs {
    /// A checkpoint written by `ncf train --save`.
    #[arg(long)]
    model: PathBuf,
    /// Titles, years and genres from `movies.dat`, `u.item` or `movies.csv`.
    #[arg(long)]
    items_meta: Option<PathBuf>,
    /// Address to listen on (port 0: any free port; the chosen one is printed).
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: String,
    /// Watch the checkpoint and swap in a new one when the file changes (checked every
    /// second; `ncf train --save` replaces it atomically). SIGHUP reloads it too.
    #[arg(long)]
    reload: bool,
}

pub fn run(a: ServeArgs) -> Result<bool> {
    let loaded = load(&a.model)?;
    let meta = load_meta(a.items_meta.as_deref())?;
    let st = AppState::new(loaded, meta, a.model.clone());
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&a.addr).await.with_context(|| format!("binding {}", a.addr))?;
        let addr = listener.local_addr()?;
        println!("listening on http://{addr}");
        let reload_state = st.clone();
        tokio::spawn(async move { reload_on_sighup(reload_state).await });
        if a.reload {
            let watch_state = st.clone();
            tokio::spawn(async move { reload_on_change(watch_state).await });
        }
        axum::serve(listener, app(st)).with_graceful_shutdown(shutdown()).await?;
        eprintln!("stopped");
        anyhow::Ok(())
    })?;
    Ok(true)
}

/// SIGTERM or Ctrl-C.
async fn shutdown() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// Builds the model aside from the checkpoint and swaps it in; on failure the old one keeps
/// serving.
async fn reload(st: &Shared) {
    let path = st.path.clone();
    match tokio::task::spawn_blocking(move || load(&path)).await {
        Ok(Ok(m)) => {
            *st.model.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(m);
            eprintln!("reloaded {}", st.path.display());
        }
        Ok(Err(e)) => eprintln!("reload failed, still serving the old model: {e:#}"),
        Err(e) => eprintln!("reload failed: {e}"),
    }
}

/// `--reload`: polls the checkpoint's modification time and size every second.
async fn reload_on_change(st: Shared) {
    let stamp = |p: &std::path::Path| std::fs::metadata(p).ok().map(|m| (m.modified().ok(), m.len()));
    let mut last = stamp(&st.path);
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let now = stamp(&st.path);
        if now.is_some() && now != last {
            last = now;
            reload(&st).await;
        }
    }
}

/// Reloads the checkpoint on SIGHUP: a new model is built aside and swapped in; requests in
/// flight keep the one they started with. A checkpoint that fails to load leaves the old one
/// serving.
async fn reload_on_sighup(st: Shared) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else { return };
        while hup.recv().await.is_some() {
            reload(&st).await;
        }
    }
}
