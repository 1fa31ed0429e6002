//! The browser UI's routes over HTTP against the real binary: what is served where, to whom, with
//! which headers. (What the pages do in a browser is checked by scripts/browser-check.sh.)

mod common;

use common::*;
use serde_json::Value;

fn start() -> (Repo, Server) {
    let repo = Repo::new();
    repo.add("tiny", 1, "tiny_w3.safetensors", "max_batch_size = 2\n");
    let path = repo.path().to_str().unwrap().to_string();
    let server = Server::start(
        &["--model-repository", &path],
        &[("SHIFTSERVE_API_KEY", API_KEY)],
    );
    (repo, server)
}

#[test]
fn pages_assets_negotiation_and_caching() {
    let (_repo, s) = start();
    let c = &s.client;

    // A browser asking for `/` gets the playground, without the API key, locked to this origin.
    let page = c
        .get(s.url("/"))
        .header("accept", "text/html,application/xhtml+xml;q=0.9,*/*;q=0.8")
        .send()
        .unwrap();
    assert_eq!(page.status(), 200);
    let h = page.headers().clone();
    assert_eq!(h["content-type"], "text/html; charset=utf-8");
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'self'") && csp.contains("script-src 'self'"));
    assert!(!csp.contains("script-src 'self' 'unsafe"), "{csp}");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["vary"], "accept");
    let html = page.text().unwrap();
    assert!(html.contains("/ui/app.js") && html.contains("/ui/style.css"));
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "the page names another origin"
    );

    // Anything else asking for `/` (curl, scripts) still gets the JSON summary.
    for accept in [None, Some("application/json"), Some("*/*")] {
        let mut rb = c.get(s.url("/"));
        if let Some(a) = accept {
            rb = rb.header("accept", a);
        }
        let r = rb.send().unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json"));
        let r_vary = r.headers()["vary"].to_str().unwrap().to_string();
        let v: Value = r.json().unwrap();
        assert_eq!(v["name"], "shiftserve");
        assert_eq!(v["docs"], "/docs");
        assert_eq!(v["ui"], "/");
        assert_eq!(r_vary, "accept");
    }

    // /docs: Swagger UI on the server's own document; the renderer is served from here.
    let docs = c.get(s.url("/docs")).send().unwrap();
    assert_eq!(docs.status(), 200);
    assert!(docs.headers().contains_key("content-security-policy"));
    let docs = docs.text().unwrap();
    assert!(docs.contains("/docs/swagger-ui-bundle.js") && docs.contains("/docs/docs.js"));
    let init = c
        .get(s.url("/docs/docs.js"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(init.contains("/api-doc/openapi.json") && init.contains("validatorUrl: null"));

    // Every file the pages reference, with its type; none needs the key.
    for (path, ty, min_len) in [
        ("/ui/app.js", "text/javascript; charset=utf-8", 1000),
        ("/ui/wav.js", "text/javascript; charset=utf-8", 500),
        (
            "/ui/recorder-worklet.js",
            "text/javascript; charset=utf-8",
            500,
        ),
        ("/ui/style.css", "text/css; charset=utf-8", 1000),
        ("/ui/favicon.svg", "image/svg+xml", 100),
        (
            "/docs/swagger-ui-bundle.js",
            "text/javascript; charset=utf-8",
            1_000_000,
        ),
        ("/docs/swagger-ui.css", "text/css; charset=utf-8", 100_000),
        ("/docs/LICENSE", "text/plain; charset=utf-8", 10_000),
    ] {
        let r = c.get(s.url(path)).send().unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(r.headers()["content-type"], ty, "{path}");
        assert_eq!(r.headers()["cache-control"], "no-cache", "{path}");
        let etag = r.headers()["etag"].to_str().unwrap().to_string();
        assert!(
            etag.starts_with('"') && etag.ends_with('"'),
            "{path}: {etag}"
        );
        assert!(r.bytes().unwrap().len() >= min_len, "{path}");

        // Revalidation: the same tag is 304 with no body, another tag the full file.
        let r = c
            .get(s.url(path))
            .header("if-none-match", &etag)
            .send()
            .unwrap();
        assert_eq!(r.status(), 304, "{path}");
        assert_eq!(r.headers()["etag"].to_str().unwrap(), etag);
        assert!(r.bytes().unwrap().is_empty());
        let r = c
            .get(s.url(path))
            .header("if-none-match", "\"something-else\"")
            .send()
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    // Tags differ between files.
    let tag = |p: &str| {
        c.get(s.url(p)).send().unwrap().headers()["etag"]
            .to_str()
            .unwrap()
            .to_string()
    };
    assert_ne!(tag("/ui/app.js"), tag("/ui/style.css"));

    // The UI adds no hole in the API's auth, and unknown UI paths are the API's JSON 404.
    let r = c.get(s.url("/v1/models")).send().unwrap();
    assert_eq!(r.status(), 401);
    let r = c.get(s.url("/ui/missing.js")).send().unwrap();
    assert_eq!(r.status(), 404);
    let v: Value = r.json().unwrap();
    assert!(v["error"].as_str().unwrap().contains("no such route"));
    let r = c.post(s.url("/ui/app.js")).send().unwrap();
    assert_eq!(r.status(), 405);
    let v: Value = r.json().unwrap();
    assert!(v["error"].is_string());
}
