//! OpenAPI document (utoipa) and a self-contained docs page that renders it without any
//! external script, so it works on air-gapped hosts.

use axum::http::{header, HeaderValue};
use axum::response::{Html, IntoResponse, Response};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "shiftserve", description = "CPU inference server for multiplication-free (power-of-two weight) networks: Open Inference Protocol v2 and a task API. When the server runs with an API key, every route except health, metrics and docs needs `Authorization: Bearer <key>`."),
    paths(
        super::live, super::ready, super::metrics,
        super::v1::predict, super::v1::predict_version, super::v1::list_models,
        super::v2::server_metadata, super::v2::model_metadata, super::v2::model_metadata_version,
        super::v2::model_ready, super::v2::model_ready_version, super::v2::model_config, super::v2::model_config_version,
        super::v2::all_stats, super::v2::model_stats, super::v2::model_stats_version,
        super::v2::infer, super::v2::infer_version,
        super::v2::repository_index, super::v2::repository_load, super::v2::repository_unload,
    ),
    components(schemas(
        super::v1::PredictResponse, super::v1::Prediction, super::v1::TimingMs, super::v1::IntentOut, super::v1::B64Body,
        super::v1::ModelList, super::v1::ModelSummary, super::v1::LayerKernelSummary, super::v1::InputSpec,
        super::v2::ServerMetadata, super::v2::ModelMetadata, super::v2::TensorMetadata, super::v2::InferRequest,
        super::v2::InferInput, super::v2::RequestedOutput, super::v2::StatsResponse, super::v2::IndexRequest,
        crate::repository::IndexEntry, crate::stats::ModelStats, crate::stats::Percentiles, crate::error::ErrorBody,
    )),
    modifiers(&BearerAuth),
    tags((name = "task", description = "Task API for people and scripts"),
         (name = "v2", description = "Open Inference Protocol v2"),
         (name = "repository", description = "Model repository extension"),
         (name = "health"), (name = "metrics"))
)]
pub struct ApiDoc;

pub fn spec_json() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .expect("OpenAPI serializes")
}

pub async fn openapi_json() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        spec_json(),
    )
        .into_response()
}

const DOCS_HTML: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>shiftserve API</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1b1f24;background:#f6f8fa}
header{background:#24292f;color:#fff;padding:16px 24px}header h1{margin:0;font-size:22px}
main{max-width:1000px;margin:0 auto;padding:16px 24px}
.op{background:#fff;border:1px solid #d0d7de;border-radius:6px;margin:10px 0;padding:10px 14px}
.m{display:inline-block;min-width:56px;text-align:center;font-weight:700;border-radius:4px;padding:2px 6px;color:#fff;margin-right:8px}
.get{background:#0969da}.post{background:#1a7f37}
code{font-family:ui-monospace,SFMono-Regular,Menlo,monospace}.path{font-weight:600}
details summary{cursor:pointer}table{border-collapse:collapse;margin:6px 0}td,th{border:1px solid #d0d7de;padding:3px 8px;font-size:14px;text-align:left}
h2{margin-top:28px;border-bottom:1px solid #d0d7de}p.d{margin:6px 0;color:#444}
</style></head><body>
<header><h1>shiftserve API</h1><div id="sub"></div></header>
<main id="main">Loading <a href="/api-doc/openapi.json">/api-doc/openapi.json</a>...</main>
<script>
function esc(s){return String(s??'').replace(/[&<>"]/g,c=>({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'}[c]))}
fetch('/api-doc/openapi.json').then(r=>r.json()).then(spec=>{
  document.getElementById('sub').textContent=(spec.info.description||'')+' (OpenAPI '+spec.openapi+', version '+spec.info.version+')';
  const byTag={};
  for(const [path,item] of Object.entries(spec.paths)){for(const [method,op] of Object.entries(item)){
    const tag=(op.tags||['other'])[0];(byTag[tag]=byTag[tag]||[]).push({path,method,op});}}
  let h='<p>Raw spec: <a href="/api-doc/openapi.json">/api-doc/openapi.json</a></p>';
  for(const [tag,ops] of Object.entries(byTag)){
    h+='<h2>'+esc(tag)+'</h2>';
    for(const {path,method,op} of ops){
      h+='<div class="op"><span class="m '+method+'">'+method.toUpperCase()+'</span><code class="path">'+esc(path)+'</code>';
      if(op.summary)h+='<p class="d">'+esc(op.summary)+'</p>';
      if(op.description)h+='<p class="d">'+esc(op.description)+'</p>';
      h+='<details><summary>parameters and responses</summary>';
      if(op.parameters&&op.parameters.length){h+='<table><tr><th>name</th><th>in</th><th>required</th><th>description</th></tr>';
        for(const p of op.parameters)h+='<tr><td><code>'+esc(p.name)+'</code></td><td>'+esc(p.in)+'</td><td>'+(p.required?'yes':'no')+'</td><td>'+esc(p.description)+'</td></tr>';h+='</table>';}
      if(op.requestBody){h+='<p>Request body: '+esc(op.requestBody.description)+' ('+Object.keys(op.requestBody.content||{}).map(esc).join(', ')+')</p>';}
      h+='<table><tr><th>status</th><th>description</th></tr>';
      for(const [code,r] of Object.entries(op.responses||{}))h+='<tr><td>'+esc(code)+'</td><td>'+esc(r.description)+'</td></tr>';
      h+='</table></details></div>';}}
  document.getElementById('main').innerHTML=h;
}).catch(e=>{document.getElementById('main').textContent='Cannot load the OpenAPI document: '+e});
</script></body></html>
"#;

pub async fn docs_page() -> Html<&'static str> {
    Html(DOCS_HTML)
}
