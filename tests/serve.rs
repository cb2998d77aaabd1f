//! `ncf serve` on 127.0.0.1 (any free port), driven with plain HTTP/1.1 over a TcpStream: every
//! endpoint answers, every malformed request gets its 4xx status with a JSON `{"error"}`, and
//! SIGTERM stops the server cleanly. The demo page runs in headless Chromium (`serve/cdp.rs`).

#[path = "serve/cdp.rs"]
mod cdp;

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};

struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(model: &std::path::Path) -> Server {
        Self::start_with(model, &[])
    }

    fn start_with(model: &std::path::Path, extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ncf"))
            .args(["serve", "--model", model.to_str().unwrap(), "--addr", "127.0.0.1:0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
        let port = line.trim().rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("{line}"));
        Server { child, port }
    }

    /// `(status, body)` of one request.
    fn request(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        let body = body.unwrap_or("");
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(body.as_bytes()).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out); // the server may close early on an oversized body
        let text = String::from_utf8_lossy(&out).into_owned();
        let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("{text}"));
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        (status, body)
    }

    fn json(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        let (status, text) = self.request(method, path, body);
        (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: {e}: {text}")))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

#[test]
fn every_endpoint_answers_and_every_bad_request_gets_a_json_4xx() {
    let d = tempfile::tempdir().unwrap();
    let model = d.path().join("m.safetensors");
    let o = Command::new(env!("CARGO_BIN_EXE_ncf"))
        .args(["train", "--epochs", "1", "--save", model.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let srv = Server::start(&model);

    let (s, v) = srv.json("GET", "/health", None);
    assert_eq!((s, v["status"].as_str()), (200, Some("ok")));
    let (s, v) = srv.json("GET", "/users/1/recommendations?k=5", None);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["items"].as_array().unwrap().len(), 5);
    assert!(!v["history"].as_array().unwrap().is_empty());
    let history: Vec<u64> = v["history"].as_array().unwrap().iter().map(|h| h["item"].as_u64().unwrap()).collect();
    assert!(v["items"].as_array().unwrap().iter().all(|i| !history.contains(&i["item"].as_u64().unwrap())));
    let (s, v) = srv.json("GET", "/users/99999999/recommendations", None);
    assert_eq!((s, v["fallback"].as_str()), (200, Some("popularity")));
    let item = v["items"][0]["item"].as_u64().unwrap();
    let (s, v) = srv.json("GET", &format!("/items/{item}/similar?k=3"), None);
    assert_eq!((s, v["similar"].as_array().unwrap().len()), (200, 3));
    let (s, v) = srv.json("POST", "/score", Some(&format!("{{\"pairs\": [[1, {item}], [2, {item}]]}}")));
    assert_eq!((s, v["scores"].as_array().unwrap().len()), (200, 2));
    let (s, v) = srv.json("POST", "/users/recommendations", Some(&format!("{{\"items\": [{item}], \"k\": 4}}")));
    assert_eq!((s, v["items"].as_array().unwrap().len()), (200, 4), "{v}");
    let (s, page) = srv.request("GET", "/", None);
    assert!(s == 200 && page.contains("ncf-rs demo") && page.contains("/recommendations"));
    let (s, api) = srv.json("GET", "/openapi.json", None);
    assert_eq!((s, api["openapi"].as_str()), (200, Some("3.0.3")));

    // Every malformed request: its status, and a JSON error with a message.
    let many_pairs = format!("{{\"pairs\": [{}]}}", vec!["[1,1]"; 10_001].join(","));
    let huge = format!("{{\"items\": [1], \"pad\": \"{}\"}}", "x".repeat(70_000));
    let cases: Vec<(&str, String, Option<String>, u16, &str)> = vec![
        ("GET", "/users/abc/recommendations".into(), None, 400, "user id must be a non-negative integer"),
        ("GET", "/users/-3/recommendations".into(), None, 400, "user id must be"),
        ("GET", "/users/1/recommendations?k=0".into(), None, 400, "k must be an integer in 1..=1000"),
        ("GET", "/users/1/recommendations?k=1001".into(), None, 400, "k must be an integer in 1..=1000"),
        ("GET", "/users/1/recommendations?k=ten".into(), None, 400, "k must be an integer"),
        ("GET", "/items/x/similar".into(), None, 400, "item id must be"),
        ("GET", "/items/99999999/similar".into(), None, 404, "item 99999999 is not in the model"),
        ("POST", "/score".into(), Some("{\"pairs\": [[1, 2]".into()), 400, "Failed to parse the request body as JSON"),
        ("POST", "/score".into(), Some("{\"pairs\": \"no\"}".into()), 422, "pairs"),
        (
            "POST",
            "/score".into(),
            Some("{\"pairs\": [[99999999, 1]]}".into()),
            404,
            "user 99999999 is not in the model",
        ),
        ("POST", "/score".into(), Some(many_pairs), 413, "at most 10000 pairs"),
        ("POST", "/users/recommendations".into(), Some("{\"items\": []}".into()), 400, "items must list 1 to 1000"),
        (
            "POST",
            "/users/recommendations".into(),
            Some(format!("{{\"items\": [{item}], \"k\": 0}}")),
            400,
            "k must be in 1..=1000",
        ),
        ("POST", "/users/recommendations".into(), Some("{\"items\": [99999999]}".into()), 404, "item 99999999 is not"),
        ("POST", "/users/recommendations".into(), Some(huge), 413, "length limit"),
        ("GET", "/nope".into(), None, 404, "no such endpoint"),
        ("DELETE", "/health".into(), None, 405, "method not allowed"),
    ];
    for (method, path, body, want, msg) in cases {
        let (s, text) = srv.request(method, &path, body.as_deref());
        let v: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {text}"));
        let err = v["error"].as_str().unwrap_or_else(|| panic!("{method} {path}: no error field: {text}"));
        assert_eq!(s, want, "{method} {path}: {err}");
        assert!(err.contains(msg), "{method} {path}: `{err}` does not say `{msg}`");
    }
    // The server survived all of it.
    assert_eq!(srv.json("GET", "/health", None).0, 200);

    // SIGTERM: a clean exit.
    let mut srv = srv;
    let pid = srv.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = srv.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let mut err = String::new();
    srv.child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(err.contains("stopped"), "{err}");
}

fn train(out: &std::path::Path, seed: &str) {
    let o = Command::new(env!("CARGO_BIN_EXE_ncf"))
        .args(["train", "--epochs", "1", "--seed", seed, "--save", out.to_str().unwrap(), "--force"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// SIGHUP, and with `--reload` a new file, swap in the new checkpoint; every request made
/// meanwhile is answered (200), first by the old model, then by the new one.
#[test]
fn sighup_and_reload_swap_in_a_new_checkpoint_without_dropping_requests() {
    let d = tempfile::tempdir().unwrap();
    let (a, b) = (d.path().join("a.st"), d.path().join("b.st"));
    train(&a, "1");
    train(&b, "2");
    for mode in ["sighup", "--reload"] {
        let live = d.path().join(format!("live-{}.st", mode.trim_start_matches('-')));
        std::fs::copy(&a, &live).unwrap();
        let srv = if mode == "sighup" { Server::start(&live) } else { Server::start_with(&live, &["--reload"]) };
        let recs = |srv: &Server| {
            let (s, v) = srv.json("GET", "/users/1/recommendations?k=10", None);
            assert_eq!(s, 200, "{v}");
            v["items"].clone()
        };
        let before = recs(&srv);
        // Replace the file the way `ncf train --save` does: a new file, then a rename.
        let tmp = d.path().join("incoming.st");
        std::fs::copy(&b, &tmp).unwrap();
        std::fs::rename(&tmp, &live).unwrap();
        if mode == "sighup" {
            let pid = srv.child.id().to_string();
            assert!(Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
        }
        let mut changed = false;
        for _ in 0..100 {
            if recs(&srv) != before {
                changed = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert!(changed, "{mode}: still the old model's recommendations after 5 s");
        assert_eq!(srv.json("GET", "/health", None).0, 200);
    }
}

/// The demo page in a real browser (headless Chromium, driven over the DevTools protocol): it
/// loads, a user id is typed and the button clicked, the history and the ten recommendations
/// render with titles and genres (the same items, in the same order, as the JSON API gives),
/// a click on a recommended movie fills the similar list with that movie's neighbours. No
/// script error on the way. The screenshot is left at `target/tmp/demo-page.png`.
#[test]
fn the_demo_page_works_in_a_real_browser() {
    let (Some(split), Some(ml1m)) = (ncf_core::testenv::data_dir("ncf-ml-1m"), ncf_core::testenv::data_dir("ml-1m"))
    else {
        return;
    };
    let Some(chromium) = cdp::find_chromium() else {
        return ncf_core::testenv::skip("NCF_REQUIRE_BROWSER", "no chromium on the PATH (set NCF_CHROMIUM)");
    };
    let d = tempfile::tempdir().unwrap();
    let model = d.path().join("m.safetensors");
    let o = Command::new(env!("CARGO_BIN_EXE_ncf"))
        .args(["train", "--epochs", "1", "--data", split.to_str().unwrap(), "--save", model.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let meta = ml1m.join("movies.dat");
    let srv = Server::start_with(&model, &["--items-meta", meta.to_str().unwrap()]);
    let mut b = cdp::Browser::launch(&chromium);
    let base = format!("http://127.0.0.1:{}", srv.port);
    b.goto(&format!("{base}/"));
    assert_eq!(b.eval("document.title"), "ncf-rs demo");

    // Pick user 42 and ask.
    b.type_into("#user", "42");
    b.click("#go");
    let ten = std::time::Duration::from_secs(20);
    b.wait_for("document.querySelectorAll('#recs li').length === 10", "10 recommendations", ten);
    let rendered = |b: &mut cdp::Browser, list: &str| -> Vec<(u64, String, String)> {
        let js = format!(
            "[...document.querySelectorAll('#{list} li')].map(li => [Number(li.dataset.item), li.firstChild.textContent, \
             (li.querySelector('.genres') || {{textContent: ''}}).textContent])"
        );
        let v = b.eval(&js);
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| (r[0].as_u64().unwrap(), r[1].as_str().unwrap().trim().into(), r[2].as_str().unwrap().into()))
            .collect()
    };
    let recs = rendered(&mut b, "recs");
    let history = rendered(&mut b, "history");
    let (s, api) = srv.json("GET", "/users/42/recommendations?k=10", None);
    assert_eq!(s, 200, "{api}");
    let api_items: Vec<u64> = api["items"].as_array().unwrap().iter().map(|i| i["item"].as_u64().unwrap()).collect();
    assert_eq!(recs.iter().map(|r| r.0).collect::<Vec<_>>(), api_items, "the page shows what the API answers");
    assert_eq!(history.len(), api["history"].as_array().unwrap().len().min(20));
    assert!(history.len() >= 10, "user 42's history: {history:?}");
    for (item, title, genres) in recs.iter().chain(&history) {
        assert!(title.ends_with(')') && !title.starts_with("item "), "item {item}: no title and year: `{title}`");
        assert!(!genres.is_empty(), "item {item} ({title}): no genres");
    }
    assert!(recs.iter().all(|r| !api["history"].as_array().unwrap().iter().any(|h| h["item"] == r.0)));

    // Click the first recommended movie: its neighbours appear.
    let (first, first_title, _) = recs[0].clone();
    b.click("#recs li");
    b.wait_for(
        "document.querySelectorAll('#similar li').length === 10 && document.getElementById('similar-title').textContent.startsWith('Similar to ')",
        "10 similar items",
        ten,
    );
    let title = b.eval("document.getElementById('similar-title').textContent");
    assert_eq!(title.as_str().unwrap().trim(), format!("Similar to {first_title}"));
    let similar = rendered(&mut b, "similar");
    let (s, api) = srv.json("GET", &format!("/items/{first}/similar?k=10"), None);
    assert_eq!(s, 200, "{api}");
    let api_items: Vec<u64> = api["similar"].as_array().unwrap().iter().map(|i| i["item"].as_u64().unwrap()).collect();
    assert_eq!(similar.iter().map(|r| r.0).collect::<Vec<_>>(), api_items);
    assert!(!api_items.contains(&first), "an item is not its own neighbour");
    assert_eq!(b.eval("document.getElementById('error').textContent"), "");
    assert!(b.errors.is_empty(), "script errors: {:?}", b.errors);

    let png = b.screenshot();
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "{} bytes", png.len());
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("demo-page.png");
    std::fs::write(&out, &png).unwrap();
    println!("screenshot: {} ({} bytes); recommended for user 42: {:?}", out.display(), png.len(), recs);
    println!("similar to {first_title}: {:?}", similar.iter().map(|s| &s.1).collect::<Vec<_>>());
}
