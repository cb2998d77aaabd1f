//! `ncf serve`'s HTTP requests: the input is the raw bytes a client sends on one connection
//! (one or more HTTP/1.1 requests, or garbage). They go through hyper's parser into the real
//! router ([`ncf::serve::app`]) serving a small trained model, as on a socket. Whatever the
//! bytes, the server must not panic, and must never answer 5xx: every bad request is the
//! client's fault (4xx).
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A model of 20 users × 15 items, trained once per process and served from a checkpoint.
fn state() -> &'static (tokio::runtime::Runtime, ncf::serve::Shared) {
    static S: OnceLock<(tokio::runtime::Runtime, ncf::serve::Shared)> = OnceLock::new();
    S.get_or_init(|| {
        let pairs: Vec<(u64, u64)> =
            (0..20u64).flat_map(|u| (0..4).map(move |k| (u + 1, (u * 7 + k * 3) % 15 + 100))).collect();
        let rec = ncf::Recommender::builder().model("neumf").factors(4).layers(&[8, 4]).epochs(1).fit(&pairs).unwrap();
        let path = ncf_fuzz::scratch().join("serve.safetensors");
        rec.save(&path, true).unwrap();
        let loaded = ncf::serve::load(&path).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        (rt, ncf::serve::AppState::new(loaded, Default::default(), path))
    })
}

fuzz_target!(|data: &[u8]| {
    let (rt, st) = state();
    let app = ncf::serve::app(st.clone());
    let response = rt.block_on(async {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let svc = hyper_util::service::TowerToHyperService::new(app);
        let conn =
            hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(server), svc);
        let talk = async {
            let _ = client.write_all(data).await;
            let _ = client.shutdown().await;
            let mut out = Vec::new();
            let _ = client.read_to_end(&mut out).await;
            out
        };
        let limit = std::time::Duration::from_secs(5);
        let (_, out) =
            tokio::time::timeout(limit, async { tokio::join!(conn, talk) }).await.expect("the connection hung");
        out
    });
    // Every status line of the answers (a connection may carry several requests).
    for line in response.split(|&b| b == b'\n').filter(|l| l.starts_with(b"HTTP/1.")) {
        let status = line.get(9..12).unwrap_or_default();
        assert!(!status.starts_with(b"5"), "a 5xx answer: {}", String::from_utf8_lossy(line));
    }
});
