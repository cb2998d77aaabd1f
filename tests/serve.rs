//! `ncf serve` on 127.0.0.1 (any free port), driven with plain HTTP/1.1 over a TcpStream: every
//! endpoint answers, every malformed request gets its 4xx status with a JSON `{"error"}`, and
//! SIGTERM stops the server cleanly.

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
