//! The browser UI: the model playground at `/` and the OpenAPI renderer at `/docs`.
//!
//! Every file lives in `server/web/` and is compiled into the binary (`include_str!`), so the
//! pages work on air-gapped hosts: nothing is fetched from anywhere but this server, which the
//! Content-Security-Policy of each page also enforces. The pages are public (like the OpenAPI
//! document); the API calls they make carry the key the user types in when the server runs with
//! `--api-key`.

use super::SharedState;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use std::hash::{Hash, Hasher};
use std::sync::OnceLock;

/// Scripts, styles and connections from this origin only; `blob:` for the recorded WAV and the
/// chosen image's preview, `data:` for the renderer's inline icons.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
img-src 'self' data: blob:; media-src 'self' blob:; connect-src 'self' blob:; font-src 'self' data:; \
object-src 'none'; base-uri 'none'; frame-ancestors 'self'; form-action 'self'";

struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const HTML: &str = "text/html; charset=utf-8";

/// Every embedded file. The two pages come first (`INDEX`, `DOCS`); the others are served as is.
const FILES: &[Asset] = &[
    Asset {
        path: "/",
        content_type: HTML,
        body: include_str!("../../web/index.html"),
    },
    Asset {
        path: "/docs",
        content_type: HTML,
        body: include_str!("../../web/docs.html"),
    },
    Asset {
        path: "/ui/app.js",
        content_type: JS,
        body: include_str!("../../web/app.js"),
    },
    Asset {
        path: "/ui/wav.js",
        content_type: JS,
        body: include_str!("../../web/wav.js"),
    },
    Asset {
        path: "/ui/recorder-worklet.js",
        content_type: JS,
        body: include_str!("../../web/recorder-worklet.js"),
    },
    Asset {
        path: "/ui/style.css",
        content_type: CSS,
        body: include_str!("../../web/style.css"),
    },
    Asset {
        path: "/ui/favicon.svg",
        content_type: "image/svg+xml",
        body: include_str!("../../web/favicon.svg"),
    },
    Asset {
        path: "/docs/docs.js",
        content_type: JS,
        body: include_str!("../../web/docs.js"),
    },
    Asset {
        path: "/docs/swagger-ui-bundle.js",
        content_type: JS,
        body: include_str!("../../web/vendor/swagger-ui/swagger-ui-bundle.js"),
    },
    Asset {
        path: "/docs/swagger-ui.css",
        content_type: CSS,
        body: include_str!("../../web/vendor/swagger-ui/swagger-ui.css"),
    },
    Asset {
        path: "/docs/LICENSE",
        content_type: "text/plain; charset=utf-8",
        body: include_str!("../../web/vendor/swagger-ui/LICENSE"),
    },
];
const INDEX: usize = 0;
const DOCS: usize = 1;

/// The routes of the UI, merged into the public (unauthenticated) part of the router.
pub fn routes() -> Router<SharedState> {
    let mut r = Router::new()
        .route("/", get(index))
        .route("/docs", get(|h: HeaderMap| async move { page(&h, DOCS) }));
    for (i, f) in FILES.iter().enumerate().skip(DOCS + 1) {
        r = r.route(f.path, get(move |h: HeaderMap| async move { asset(&h, i) }));
    }
    r
}

/// `/` is the playground for a browser and the server's JSON summary for anything else (curl,
/// scripts), chosen by the `Accept` header.
async fn index(headers: HeaderMap) -> Response {
    let wants_html = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains("text/html"));
    if wants_html {
        page(&headers, INDEX)
    } else {
        (
            [(header::VARY, HeaderValue::from_static("accept"))],
            Json(serde_json::json!({
                "name": "shiftserve",
                "version": env!("CARGO_PKG_VERSION"),
                "ui": "/",
                "docs": "/docs",
                "openapi": "/api-doc/openapi.json",
                "models": "/v1/models",
            })),
        )
            .into_response()
    }
}

fn page(headers: &HeaderMap, file: usize) -> Response {
    let mut resp = cached(headers, file);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::VARY, HeaderValue::from_static("accept"));
    resp
}

fn asset(headers: &HeaderMap, file: usize) -> Response {
    let mut resp = cached(headers, file);
    resp.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

/// Answers with the file, or 304 when the browser already holds this build's copy. The files
/// change only with the binary, so an ETag of their content lets the browser revalidate cheaply
/// (`no-cache`) without ever showing a stale page after an upgrade.
fn cached(headers: &HeaderMap, file: usize) -> Response {
    let a = &FILES[file];
    let tag = etag(file);
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag || t.trim() == "*"));
    let common = [
        (header::ETAG, HeaderValue::from_str(tag).expect("hex etag")),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
    ];
    if fresh {
        (StatusCode::NOT_MODIFIED, common).into_response()
    } else {
        (
            common,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(a.content_type),
            )],
            a.body,
        )
            .into_response()
    }
}

/// A strong ETag of an embedded file: a hash of its content, computed once per process (SipHash
/// with fixed keys, so every process of one build gives the same tags).
fn etag(file: usize) -> &'static str {
    static TAGS: OnceLock<Vec<String>> = OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        FILES
            .iter()
            .map(|a| {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                a.body.hash(&mut h);
                format!("\"{:016x}-{:x}\"", h.finish(), a.body.len())
            })
            .collect()
    });
    &tags[file]
}
