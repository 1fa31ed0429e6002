//! The gRPC front end (`inference.GRPCInferenceService`) against the real binary: the same
//! answers as the HTTP routes, typed and raw tensors, raw image/WAV bytes, status codes of
//! every refusal (malformed and oversized messages, wrong key, unknown model, shape and batch
//! limits, full queue), the repository extension, statistics, metrics and the drain.

mod common;

use common::*;
use serde_json::{json, Value};
use shiftserve::grpc::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use shiftserve::grpc::proto::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use shiftserve::grpc::proto::*;
use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic::{Code, Status};

const TINY_CFG: &str = "max_batch_size = 4\nmax_queue_delay_us = 1000\n";

type Client = GrpcInferenceServiceClient<Channel>;

/// Runs one async block on a fresh runtime (the HTTP checks use blocking reqwest, which must not
/// run inside a runtime).
fn block<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

async fn channel(s: &Server) -> Channel {
    Channel::from_shared(format!("http://{}", s.grpc_addr()))
        .unwrap()
        .connect()
        .await
        .expect("connect to the gRPC port")
}

async fn client(s: &Server) -> Client {
    GrpcInferenceServiceClient::new(channel(s).await)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
}

fn with_key<T>(msg: T, key: Option<&str>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Some(k) = key {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {k}").parse().unwrap());
    }
    r
}

/// A deterministic 28x28 image tensor in [0, 1].
fn pattern(batch: usize, seed: usize) -> Vec<f32> {
    (0..batch * 28 * 28)
        .map(|i| ((i * 7 + seed * 31) % 255) as f32 / 255.0)
        .collect()
}

fn f32_le(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn from_le(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn bytes_elems(mut b: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let n = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
        out.push(String::from_utf8(b[4..4 + n].to_vec()).unwrap());
        b = &b[4 + n..];
    }
    out
}

fn tensor(name: &str, datatype: &str, shape: &[i64]) -> InferInputTensor {
    InferInputTensor {
        name: name.into(),
        datatype: datatype.into(),
        shape: shape.to_vec(),
        parameters: HashMap::new(),
        contents: None,
    }
}

fn raw_request(model: &str, input: InferInputTensor, raw: Vec<u8>) -> ModelInferRequest {
    ModelInferRequest {
        model_name: model.into(),
        inputs: vec![input],
        raw_input_contents: vec![raw.into()],
        ..Default::default()
    }
}

fn output(name: &str, classification: Option<i64>) -> InferRequestedOutputTensor {
    let mut parameters = HashMap::new();
    if let Some(k) = classification {
        parameters.insert(
            "classification".to_string(),
            InferParameter {
                parameter_choice: Some(infer_parameter::ParameterChoice::Int64Param(k)),
            },
        );
    }
    InferRequestedOutputTensor {
        name: name.into(),
        parameters,
    }
}

/// The logits output of an answer, as f32.
fn logits(r: &ModelInferResponse) -> Vec<f32> {
    let i = r
        .outputs
        .iter()
        .position(|o| o.name == "logits")
        .expect("a logits output");
    assert_eq!(r.outputs[i].datatype, "FP32");
    from_le(&r.raw_output_contents[i])
}

/// The logits the HTTP v2 route answers for a JSON FP32 tensor.
fn http_logits_json(s: &Server, model: &str, shape: &[usize], data: &[f32]) -> Vec<f32> {
    let body = json!({"inputs": [{"name": "input", "shape": shape, "datatype": "FP32", "data": data}],
        "outputs": [{"name": "logits"}]});
    let v: Value = s
        .client
        .post(s.url(&format!("/v2/models/{model}/infer")))
        .json(&body)
        .send()
        .unwrap()
        .json()
        .unwrap();
    json_f32(&v["outputs"][0]["data"])
}

/// The logits the HTTP v2 route answers for a raw binary body (an encoded file).
fn http_logits_raw(s: &Server, model: &str, content_type: &str, body: Vec<u8>) -> Vec<f32> {
    let r = s
        .client
        .post(s.url(&format!("/v2/models/{model}/infer")))
        .header("inference-header-content-length", "0")
        .header("content-type", content_type)
        .body(body)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().unwrap();
    let o = v["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "logits")
        .unwrap()
        .clone();
    json_f32(&o["data"])
}

fn json_f32(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn argmax(v: &[f32]) -> usize {
    (0..v.len())
        .max_by(|&a, &b| v[a].total_cmp(&v[b]).then(b.cmp(&a)))
        .unwrap()
}

#[track_caller]
fn assert_code<T: std::fmt::Debug>(r: Result<T, Status>, code: Code, needle: &str) -> Status {
    let e = r.expect_err("expected an error status");
    assert_eq!(e.code(), code, "{e:?}");
    assert!(
        e.message().contains(needle),
        "{:?}: message {:?} lacks {needle:?}",
        e.code(),
        e.message()
    );
    e
}

#[test]
fn grpc_serves_the_same_answers_as_http() {
    let repo = Repo::new();
    repo.add("tiny", 1, "tiny_w3.safetensors", TINY_CFG);
    repo.add("slu", 1, "slu_w3.safetensors", "max_batch_size = 2\n");
    let s = Server::start(&["--model-repository", repo.path().to_str().unwrap()], &[]);
    let x = pattern(2, 1);
    let want = http_logits_json(&s, "tiny", &[2, 1, 28, 28], &x);
    let png_bytes = png(28, 28, 3);
    let want_png = http_logits_raw(&s, "tiny", "image/png", png_bytes.clone());
    let want_wav = http_logits_raw(&s, "slu", "audio/wav", wav());
    let px: Vec<u8> = (0..28 * 28).map(|i| ((i * 5) % 256) as u8).collect();
    let px_f32: Vec<f32> = px.iter().map(|&p| f32::from(p)).collect();
    let want_px = http_logits_json(&s, "tiny", &[1, 28, 28], &px_f32);
    let ok_before = s.metric(
        "shiftserve_requests_total",
        &[("model", "tiny"), ("reason", "ok")],
    );

    let classes = want.len() / 2;
    let n_ok = block(async {
        let mut c = client(&s).await;
        assert!(
            c.server_live(ServerLiveRequest {})
                .await
                .unwrap()
                .into_inner()
                .live
        );
        assert!(
            c.server_ready(ServerReadyRequest {})
                .await
                .unwrap()
                .into_inner()
                .ready
        );
        let meta = c
            .server_metadata(ServerMetadataRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(meta.name, "shiftserve");
        for ext in ["model_repository", "statistics", "classification"] {
            assert!(meta.extensions.iter().any(|e| e == ext), "{ext}");
        }
        let mm = c
            .model_metadata(ModelMetadataRequest {
                name: "tiny".into(),
                version: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(mm.versions, vec!["1"]);
        assert_eq!(mm.inputs[0].name, "input");
        assert_eq!(mm.inputs[0].datatype, "FP32");
        assert_eq!(mm.inputs[0].shape, vec![-1, 1, 28, 28]);
        assert_eq!(mm.inputs[1].name, "raw");
        assert_eq!(mm.inputs[1].datatype, "BYTES");
        assert_eq!(mm.outputs[0].shape, vec![-1, classes as i64]);
        let ready = |name: &str, version: &str| ModelReadyRequest {
            name: name.into(),
            version: version.into(),
        };
        assert!(
            c.model_ready(ready("tiny", ""))
                .await
                .unwrap()
                .into_inner()
                .ready
        );
        assert!(
            c.model_ready(ready("tiny", "1"))
                .await
                .unwrap()
                .into_inner()
                .ready
        );
        assert!(
            !c.model_ready(ready("tiny", "2"))
                .await
                .unwrap()
                .into_inner()
                .ready
        );
        assert!(
            !c.model_ready(ready("nope", ""))
                .await
                .unwrap()
                .into_inner()
                .ready
        );

        // Raw FP32 contents: the HTTP answer to the bit, batch of 2, id echoed, timing metadata.
        let mut req = raw_request("tiny", tensor("input", "FP32", &[2, 1, 28, 28]), f32_le(&x));
        req.id = "req-7".into();
        let r = c.model_infer(req).await.unwrap();
        assert_eq!(r.metadata().get("x-batch-size").unwrap(), "2");
        assert!(r.metadata().get("x-inference-time").is_some());
        let r = r.into_inner();
        assert_eq!(
            (
                r.model_name.as_str(),
                r.model_version.as_str(),
                r.id.as_str()
            ),
            ("tiny", "1", "req-7")
        );
        let names: Vec<&str> = r.outputs.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(
            names,
            ["logits", "probabilities"],
            "every output by default"
        );
        assert_eq!(r.outputs[0].shape, vec![2, classes as i64]);
        assert_eq!(logits(&r), want);
        let probs = from_le(&r.raw_output_contents[1]);
        assert!((probs[..classes].iter().sum::<f32>() - 1.0).abs() < 1e-4);

        // Typed contents, a pinned version: the same.
        let mut t = tensor("input", "FP32", &[2, 1, 28, 28]);
        t.contents = Some(InferTensorContents {
            fp32_contents: x.clone(),
            ..Default::default()
        });
        let r = c
            .model_infer(ModelInferRequest {
                model_name: "tiny".into(),
                model_version: "1".into(),
                inputs: vec![t],
                outputs: vec![output("logits", None)],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.outputs.len(), 1);
        assert_eq!(logits(&r), want);

        // UINT8 pixels (raw) are converted as the HTTP route converts JSON integers.
        let r = c
            .model_infer(raw_request(
                "tiny",
                tensor("input", "UINT8", &[1, 1, 28, 28]),
                px.clone(),
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(logits(&r), want_px);

        // Raw image and WAV files as BYTES, raw and typed, against the HTTP binary route.
        let mut elem = (png_bytes.len() as u32).to_le_bytes().to_vec();
        elem.extend_from_slice(&png_bytes);
        let r = c
            .model_infer(raw_request("tiny", tensor("raw", "BYTES", &[1]), elem))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(logits(&r), want_png);
        let mut t = tensor("raw", "BYTES", &[1]);
        t.contents = Some(InferTensorContents {
            bytes_contents: vec![wav().into()],
            ..Default::default()
        });
        let r = c
            .model_infer(ModelInferRequest {
                model_name: "slu".into(),
                inputs: vec![t],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(logits(&r), want_wav);

        // Classification: the top 3 as BYTES "score:index:label", best first.
        let r = c
            .model_infer(ModelInferRequest {
                model_name: "tiny".into(),
                inputs: vec![tensor("input", "FP32", &[1, 28, 28])],
                raw_input_contents: vec![f32_le(&x[..784]).into()],
                outputs: vec![output("logits", Some(3))],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.outputs[0].datatype, "BYTES");
        assert_eq!(r.outputs[0].shape, vec![1, 3]);
        let top = bytes_elems(&r.raw_output_contents[0]);
        assert_eq!(top.len(), 3);
        let idx: usize = top[0].split(':').nth(1).unwrap().parse().unwrap();
        assert_eq!(idx, argmax(&want[..classes]));
        let score: f32 = top[0].split(':').next().unwrap().parse().unwrap();
        assert_eq!(score, want[idx]);

        // Statistics: the same counters as GET /v2/models/tiny/stats.
        let stats = c
            .model_statistics(ModelStatisticsRequest {
                name: "tiny".into(),
                version: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(stats.model_stats.len(), 1);
        let all = c
            .model_statistics(ModelStatisticsRequest::default())
            .await
            .unwrap()
            .into_inner();
        let mut names: Vec<_> = all.model_stats.iter().map(|m| m.name.clone()).collect();
        names.sort();
        assert_eq!(names, ["slu", "tiny"]);
        (5.0, stats.model_stats[0].clone())
    });
    let (n, grpc_stats) = n_ok;
    let http_stats: Value = s
        .client
        .get(s.url("/v2/models/tiny/stats"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let h = &http_stats["model_stats"][0];
    // 3 HTTP requests (json, png, the UINT8 reference) + 5 gRPC, 2 of them with a batch of 2.
    assert_eq!(
        grpc_stats.inference_stats.unwrap().success.unwrap().count,
        8
    );
    assert_eq!(h["inference_stats"]["success"]["count"], 8);
    assert_eq!(
        grpc_stats.inference_count,
        h["inference_count"].as_u64().unwrap()
    );
    let ok_after = s.metric(
        "shiftserve_requests_total",
        &[("model", "tiny"), ("reason", "ok")],
    );
    assert_eq!(
        ok_after - ok_before,
        n,
        "gRPC requests are counted in the metrics"
    );
}

/// Sends `payload` as the body of a ModelInfer call, whatever it is (malformed protobuf).
async fn raw_call(ch: Channel, payload: Vec<u8>) -> Result<ModelInferResponse, Status> {
    use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
    struct Raw;
    impl Encoder for Raw {
        type Item = Vec<u8>;
        type Error = Status;
        fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
            bytes::BufMut::put_slice(buf, &item);
            Ok(())
        }
    }
    struct Dec;
    impl Decoder for Dec {
        type Item = ModelInferResponse;
        type Error = Status;
        fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
            prost::Message::decode(buf)
                .map(Some)
                .map_err(|e| Status::internal(e.to_string()))
        }
    }
    struct RawCodec;
    impl Codec for RawCodec {
        type Encode = Vec<u8>;
        type Decode = ModelInferResponse;
        type Encoder = Raw;
        type Decoder = Dec;
        fn encoder(&mut self) -> Raw {
            Raw
        }
        fn decoder(&mut self) -> Dec {
            Dec
        }
    }
    let mut g = tonic::client::Grpc::new(ch).max_encoding_message_size(64 << 20);
    g.ready()
        .await
        .map_err(|e| Status::unknown(e.to_string()))?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/inference.GRPCInferenceService/ModelInfer",
    );
    g.unary(tonic::Request::new(payload), path, RawCodec)
        .await
        .map(|r| r.into_inner())
}

#[test]
fn grpc_refusals_have_proper_status_codes_and_never_crash() {
    let repo = Repo::new();
    repo.add("tiny", 1, "tiny_w3.safetensors", TINY_CFG);
    repo.add("slu", 1, "slu_w3.safetensors", "max_batch_size = 2\n");
    // Only one request fits in the queue, and it waits up to 4 s for company (even when the
    // worker is idle).
    repo.add(
        "slowq",
        1,
        "tiny_w3.safetensors",
        "max_batch_size = 8\nmax_queue_delay_us = 4000000\nwait_when_idle = true\nqueue_capacity = 1\n",
    );
    let s = Server::start(
        &[
            "--model-repository",
            repo.path().to_str().unwrap(),
            "--max-body-bytes",
            "200000",
        ],
        &[],
    );
    let x = pattern(1, 0);
    let bad_before = s.metric(
        "shiftserve_requests_total",
        &[("model", "tiny"), ("reason", "bad_input")],
    );
    block(async {
        let mut c = client(&s).await;
        let infer = |model: &str, t: InferInputTensor, raw: Vec<u8>| raw_request(model, t, raw);
        let fp = |shape: &[i64]| tensor("input", "FP32", shape);
        let cases: Vec<(ModelInferRequest, Code, &str)> = vec![
            (
                infer("nope", fp(&[1, 28, 28]), f32_le(&x)),
                Code::NotFound,
                "unknown model",
            ),
            (
                ModelInferRequest {
                    model_version: "7".into(),
                    ..infer("tiny", fp(&[1, 28, 28]), f32_le(&x))
                },
                Code::NotFound,
                "unknown version",
            ),
            (
                ModelInferRequest {
                    model_version: "latest".into(),
                    ..infer("tiny", fp(&[1, 28, 28]), f32_le(&x))
                },
                Code::NotFound,
                "unknown version",
            ),
            (
                infer("", fp(&[1, 28, 28]), f32_le(&x)),
                Code::InvalidArgument,
                "model_name",
            ),
            (
                infer("tiny", fp(&[1, 28, 27]), f32_le(&x[..756])),
                Code::InvalidArgument,
                "does not match",
            ),
            (
                infer("tiny", fp(&[5, 1, 28, 28]), f32_le(&pattern(5, 0))),
                Code::InvalidArgument,
                "max_batch_size",
            ),
            (
                infer("tiny", fp(&[1, 28, 28]), f32_le(&x[..700])),
                Code::InvalidArgument,
                "needs 3136",
            ),
            (
                infer("tiny", fp(&[i64::MAX, 28, 28]), vec![0; 16]),
                Code::InvalidArgument,
                "overflows",
            ),
            (
                infer("tiny", fp(&[-1, 28, 28]), f32_le(&x)),
                Code::InvalidArgument,
                "negative",
            ),
            (
                infer("tiny", tensor("input", "BOOL", &[1, 28, 28]), vec![0; 784]),
                Code::InvalidArgument,
                "numeric",
            ),
            (
                infer("tiny", tensor("raw", "FP32", &[1]), f32_le(&[1.0])),
                Code::InvalidArgument,
                "must be BYTES",
            ),
            (
                infer("tiny", tensor("pixels", "FP32", &[1, 28, 28]), f32_le(&x)),
                Code::InvalidArgument,
                "unknown input",
            ),
            (
                infer("tiny", fp(&[1, 28, 28]), f32_le(&[f32::NAN; 784])),
                Code::InvalidArgument,
                "NaN",
            ),
            (
                infer(
                    "tiny",
                    tensor("raw", "BYTES", &[1]),
                    [&[9u8, 0, 0, 0][..], b"not a png"].concat(),
                ),
                Code::InvalidArgument,
                "",
            ),
            (
                infer("tiny", tensor("raw", "BYTES", &[1]), vec![200, 0, 0, 0, 1]),
                Code::InvalidArgument,
                "BYTES element",
            ),
            (
                infer("tiny", tensor("raw", "BYTES", &[3]), vec![0, 0, 0, 0]),
                Code::InvalidArgument,
                "elements",
            ),
            (
                ModelInferRequest {
                    outputs: vec![output("embedding", None)],
                    ..infer("tiny", fp(&[1, 28, 28]), f32_le(&x))
                },
                Code::InvalidArgument,
                "unknown output",
            ),
            (
                ModelInferRequest {
                    outputs: vec![output("logits", Some(0))],
                    ..infer("tiny", fp(&[1, 28, 28]), f32_le(&x))
                },
                Code::InvalidArgument,
                "classification",
            ),
            (
                ModelInferRequest {
                    inputs: vec![fp(&[1, 28, 28]), fp(&[1, 28, 28])],
                    raw_input_contents: vec![f32_le(&x).into(), f32_le(&x).into()],
                    ..Default::default()
                }
                .with_model("tiny"),
                Code::InvalidArgument,
                "exactly one input",
            ),
            (
                ModelInferRequest {
                    inputs: vec![fp(&[1, 28, 28]), fp(&[1, 28, 28])],
                    raw_input_contents: vec![f32_le(&x).into()],
                    ..Default::default()
                }
                .with_model("tiny"),
                Code::InvalidArgument,
                "one per input",
            ),
            (
                ModelInferRequest {
                    inputs: vec![fp(&[1, 28, 28])],
                    ..Default::default()
                }
                .with_model("tiny"),
                Code::InvalidArgument,
                "no data",
            ),
            // A WAV to an image model.
            (
                {
                    let w = wav();
                    let mut e = (w.len() as u32).to_le_bytes().to_vec();
                    e.extend_from_slice(&w);
                    infer("tiny", tensor("raw", "BYTES", &[1]), e)
                },
                Code::InvalidArgument,
                "",
            ),
        ];
        for (req, code, needle) in cases {
            let what = format!(
                "{:?} {:?}",
                req.model_name,
                req.inputs.first().map(|i| (&i.name, &i.datatype, &i.shape))
            );
            let e = c.model_infer(req).await.expect_err(&what);
            assert_eq!(e.code(), code, "{what}: {e:?}");
            assert!(
                e.message().contains(needle),
                "{what}: {:?} lacks {needle:?}",
                e.message()
            );
        }

        // A message over --max-body-bytes is refused by the transport; one under it is served.
        let big = pattern(4, 0); // 4 x 3136 bytes: under the limit
        assert!(c
            .model_infer(raw_request("tiny", fp(&[4, 1, 28, 28]), f32_le(&big)))
            .await
            .is_ok());
        let e = c
            .model_infer(raw_request("tiny", fp(&[1, 28, 28]), vec![0; 300_000]))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");

        // Malformed protobuf: INTERNAL, as gRPC's status code table prescribes for a request
        // that cannot be parsed.
        for payload in [
            vec![0xff, 0xff, 0xff, 0xff],       // field 0 / bad varint
            vec![0x0a, 0x64, b't'],             // model_name claims 100 bytes, has 1
            vec![0x08, 0x01],                   // model_name sent as a varint
            vec![0x2a, 0x03, 0x1a, 0x05, 0x01], // truncated nested input shape
        ] {
            let e = raw_call(channel(&s).await, payload.clone())
                .await
                .unwrap_err();
            assert_eq!(e.code(), Code::Internal, "{payload:?}: {e:?}");
        }
        // An empty message is a valid (empty) request: no model.
        assert_code(
            raw_call(channel(&s).await, vec![]).await,
            Code::InvalidArgument,
            "model_name",
        );

        // Metadata of unknown models; statistics of unknown models.
        assert_code(
            c.model_metadata(ModelMetadataRequest {
                name: "nope".into(),
                version: String::new(),
            })
            .await,
            Code::NotFound,
            "unknown model",
        );
        assert_code(
            c.model_statistics(ModelStatisticsRequest {
                name: "nope".into(),
                version: String::new(),
            })
            .await,
            Code::NotFound,
            "unknown model",
        );
        // Load/unload outside explicit mode: the server's configuration forbids it.
        assert_code(
            c.repository_model_load(RepositoryModelLoadRequest {
                model_name: "tiny".into(),
                ..Default::default()
            })
            .await,
            Code::FailedPrecondition,
            "explicit",
        );

        // Still serving after all that.
        assert!(
            c.server_live(ServerLiveRequest {})
                .await
                .unwrap()
                .into_inner()
                .live
        );
        let r = c
            .model_infer(raw_request("tiny", fp(&[1, 28, 28]), f32_le(&x)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(logits(&r).len(), r.outputs[0].shape[1] as usize);
    });
    let bad_after = s.metric(
        "shiftserve_requests_total",
        &[("model", "tiny"), ("reason", "bad_input")],
    );
    assert!(
        bad_after - bad_before >= 15.0,
        "refusals are counted: {bad_before} -> {bad_after}"
    );

    // A full queue: RESOURCE_EXHAUSTED with retry-after, while the queued request is answered.
    std::thread::scope(|sc| {
        let queued = sc.spawn(|| {
            block(async {
                let mut c = client(&s).await;
                c.model_infer(raw_request(
                    "slowq",
                    tensor("input", "FP32", &[1, 28, 28]),
                    f32_le(&x),
                ))
                .await
                .map(|_| ())
            })
        });
        let t0 = Instant::now();
        while s.metric("shiftserve_queue_depth", &[("model", "slowq")]) != 1.0 {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "request never queued"
            );
            std::thread::sleep(Duration::from_millis(25));
        }
        let e = block(async {
            let mut c = client(&s).await;
            c.model_infer(raw_request(
                "slowq",
                tensor("input", "FP32", &[1, 28, 28]),
                f32_le(&x),
            ))
            .await
            .unwrap_err()
        });
        assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
        assert!(e.message().contains("queue is full"), "{e:?}");
        let after: u64 = e
            .metadata()
            .get("retry-after")
            .unwrap()
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(after >= 1);
        assert!(queued.join().unwrap().is_ok());
    });

    // A deadline (grpc-timeout) shorter than the batching window: DEADLINE_EXCEEDED, counted
    // as a timeout by the server.
    let timeouts_before = s.metric(
        "shiftserve_requests_total",
        &[("model", "slowq"), ("reason", "timeout")],
    );
    let e = block(async {
        let mut c = client(&s).await;
        let mut req = tonic::Request::new(raw_request(
            "slowq",
            tensor("input", "FP32", &[1, 28, 28]),
            f32_le(&x),
        ));
        req.set_timeout(Duration::from_millis(300));
        c.model_infer(req).await.unwrap_err()
    });
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
    let t0 = Instant::now();
    while s.metric(
        "shiftserve_requests_total",
        &[("model", "slowq"), ("reason", "timeout")],
    ) != timeouts_before + 1.0
    {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "server did not count the timeout"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

trait WithModel {
    fn with_model(self, m: &str) -> Self;
}

impl WithModel for ModelInferRequest {
    fn with_model(mut self, m: &str) -> Self {
        self.model_name = m.into();
        self
    }
}

#[test]
fn grpc_api_key_and_repository_extension() {
    let repo = Repo::new();
    repo.add("tiny", 1, "tiny_w3.safetensors", TINY_CFG);
    repo.add("other", 1, "tiny_w2.safetensors", TINY_CFG);
    let s = Server::start(
        &[
            "--model-repository",
            repo.path().to_str().unwrap(),
            "--model-control-mode",
            "explicit",
            "--load-model",
            "tiny",
            "--api-key",
            API_KEY,
        ],
        &[],
    );
    let repo_name = repo
        .path()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    block(async {
        let mut c = client(&s).await;
        let key = Some(API_KEY);
        // Health needs no key (as on HTTP); everything else does.
        assert!(
            c.server_live(ServerLiveRequest {})
                .await
                .unwrap()
                .into_inner()
                .live
        );
        assert!(
            c.server_ready(ServerReadyRequest {})
                .await
                .unwrap()
                .into_inner()
                .ready
        );
        for k in [None, Some("wrong-key"), Some("")] {
            assert_code(
                c.server_metadata(with_key(ServerMetadataRequest {}, k))
                    .await,
                Code::Unauthenticated,
                "API key",
            );
            assert_code(
                c.model_infer(with_key(
                    raw_request(
                        "tiny",
                        tensor("input", "FP32", &[1, 28, 28]),
                        f32_le(&pattern(1, 0)),
                    ),
                    k,
                ))
                .await,
                Code::Unauthenticated,
                "API key",
            );
            assert_code(
                c.repository_index(with_key(RepositoryIndexRequest::default(), k))
                    .await,
                Code::Unauthenticated,
                "API key",
            );
        }
        let r = c
            .model_infer(with_key(
                raw_request(
                    "tiny",
                    tensor("input", "FP32", &[1, 28, 28]),
                    f32_le(&pattern(1, 0)),
                ),
                key,
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.model_name, "tiny");

        let index = |ready: bool| {
            with_key(
                RepositoryIndexRequest {
                    repository_name: String::new(),
                    ready,
                },
                key,
            )
        };
        let states = |r: RepositoryIndexResponse| {
            let mut v: Vec<(String, String)> =
                r.models.into_iter().map(|m| (m.name, m.state)).collect();
            v.sort();
            v
        };
        assert_eq!(
            states(c.repository_index(index(false)).await.unwrap().into_inner()),
            [
                ("other".to_string(), "UNAVAILABLE".to_string()),
                ("tiny".to_string(), "READY".to_string())
            ]
        );
        assert_eq!(
            states(c.repository_index(index(true)).await.unwrap().into_inner()).len(),
            1
        );
        let ready = |name: &str| {
            with_key(
                ModelReadyRequest {
                    name: name.into(),
                    version: String::new(),
                },
                key,
            )
        };
        assert!(
            !c.model_ready(ready("other"))
                .await
                .unwrap()
                .into_inner()
                .ready
        );

        let load = |name: &str, repository: &str| {
            with_key(
                RepositoryModelLoadRequest {
                    repository_name: repository.into(),
                    model_name: name.into(),
                    parameters: HashMap::new(),
                },
                key,
            )
        };
        c.repository_model_load(load("other", "")).await.unwrap();
        assert!(
            c.model_ready(ready("other"))
                .await
                .unwrap()
                .into_inner()
                .ready
        );
        c.repository_model_load(load("other", &repo_name))
            .await
            .unwrap();
        assert_code(
            c.repository_model_load(load("other", "elsewhere")).await,
            Code::NotFound,
            "repository",
        );
        assert_code(
            c.repository_model_load(load("missing", "")).await,
            Code::NotFound,
            "not found",
        );
        assert_code(
            c.repository_model_load(load("../tiny", "")).await,
            Code::NotFound,
            "not found",
        );
        let mut with_config = load("other", "").into_inner();
        with_config.parameters.insert(
            "config".into(),
            ModelRepositoryParameter {
                parameter_choice: Some(model_repository_parameter::ParameterChoice::StringParam(
                    "{}".into(),
                )),
            },
        );
        assert_code(
            c.repository_model_load(with_key(with_config, key)).await,
            Code::InvalidArgument,
            "config",
        );

        let unload = |name: &str| {
            let mut parameters = HashMap::new();
            parameters.insert(
                "unload_dependents".to_string(),
                ModelRepositoryParameter {
                    parameter_choice: Some(model_repository_parameter::ParameterChoice::BoolParam(
                        false,
                    )),
                },
            );
            with_key(
                RepositoryModelUnloadRequest {
                    repository_name: String::new(),
                    model_name: name.into(),
                    parameters,
                },
                key,
            )
        };
        c.repository_model_unload(unload("other")).await.unwrap();
        assert!(
            !c.model_ready(ready("other"))
                .await
                .unwrap()
                .into_inner()
                .ready
        );
        assert_code(
            c.model_infer(with_key(
                raw_request(
                    "other",
                    tensor("input", "FP32", &[1, 28, 28]),
                    f32_le(&pattern(1, 0)),
                ),
                key,
            ))
            .await,
            Code::Unavailable,
            "other",
        );
        assert_code(
            c.repository_model_unload(unload("missing")).await,
            Code::NotFound,
            "unknown model",
        );
    });
}

#[test]
fn grpc_drains_on_sigterm_and_a_taken_port_stops_the_start() {
    let repo = Repo::new();
    repo.add(
        "m",
        1,
        "tiny_w3.safetensors",
        "max_batch_size = 8\nmax_queue_delay_us = 3000000\nwait_when_idle = true\n",
    );
    let mut s = Server::start(
        &[
            "--model-repository",
            repo.path().to_str().unwrap(),
            "--exit-timeout-secs",
            "30",
        ],
        &[],
    );
    let x = pattern(1, 2);
    let req = || raw_request("m", tensor("input", "FP32", &[1, 28, 28]), f32_le(&x));
    let results: Vec<Result<(), Code>> = std::thread::scope(|sc| {
        let burst: Vec<_> = (0..3)
            .map(|_| {
                sc.spawn(|| {
                    block(async {
                        let mut c = client(&s).await;
                        c.model_infer(req()).await.map(|_| ()).map_err(|e| e.code())
                    })
                })
            })
            .collect();
        let t0 = Instant::now();
        while s.metric("shiftserve_queue_depth", &[("model", "m")]) != 3.0 {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "requests never queued"
            );
            std::thread::sleep(Duration::from_millis(25));
        }
        s.sigterm();
        block(async {
            let mut c = client(&s).await;
            let t0 = Instant::now();
            while c
                .server_ready(ServerReadyRequest {})
                .await
                .unwrap()
                .into_inner()
                .ready
            {
                assert!(
                    t0.elapsed() < Duration::from_secs(5),
                    "still ready after SIGTERM"
                );
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            assert!(
                c.server_live(ServerLiveRequest {})
                    .await
                    .unwrap()
                    .into_inner()
                    .live
            );
            let ready = c
                .model_ready(ModelReadyRequest {
                    name: "m".into(),
                    version: String::new(),
                })
                .await
                .unwrap()
                .into_inner();
            assert!(!ready.ready, "models are not ready while draining");
            assert_code(
                c.model_infer(req()).await,
                Code::Unavailable,
                "shutting down",
            );
        });
        burst.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        results,
        vec![Ok(()); 3],
        "every accepted gRPC request is answered"
    );
    let status = s.wait_exit(Duration::from_secs(40));
    assert!(status.success(), "exit status {status:?}");

    // A gRPC port in use stops the start with a clear message.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = std::process::Command::new(bin())
        .args([
            "--http-address",
            "127.0.0.1",
            "--http-port",
            "0",
            "--grpc-port",
            &port,
        ])
        .args(["--model-repository", repo.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot listen for gRPC"), "{err}");
}

/// A model directory whose file is not a model: it fails to load.
fn broken(repo: &Repo, name: &str) {
    std::fs::create_dir_all(repo.path().join(name).join("1")).unwrap();
    std::fs::write(
        repo.path().join(name).join("1/model.safetensors"),
        b"not a model",
    )
    .unwrap();
}

/// Waits until the initial load is over (HTTP readiness no longer says "starting").
fn settled(s: &Server) -> u16 {
    let t0 = Instant::now();
    loop {
        let r = s.client.get(s.url("/v2/health/ready")).send().unwrap();
        let status = r.status().as_u16();
        let v: Value = r.json().unwrap();
        if status == 200 || !v["error"].as_str().unwrap_or("").contains("starting") {
            return status;
        }
        assert!(t0.elapsed() < Duration::from_secs(120), "still starting");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn grpc_readiness_bearer_scheme_and_request_ids_as_http() {
    let repo = Repo::new();
    repo.add("tiny", 1, "tiny_w3.safetensors", TINY_CFG);
    broken(&repo, "bad");
    let path = repo.path().to_str().unwrap();
    let s = Server::spawn(&["--model-repository", path, "--api-key", API_KEY], &[]);
    assert_eq!(settled(&s), 503, "strict readiness: \"bad\" failed");
    let x = pattern(1, 4);
    block(async {
        let mut c = client(&s).await;
        // --strict-readiness (the default): the server is not ready, as over HTTP, while the
        // model that loaded is ready and serves.
        assert!(
            !c.server_ready(ServerReadyRequest {})
                .await
                .unwrap()
                .into_inner()
                .ready
        );
        let ready = |name: &str| {
            with_key(
                ModelReadyRequest {
                    name: name.into(),
                    version: String::new(),
                },
                Some(API_KEY),
            )
        };
        assert!(
            c.model_ready(ready("tiny"))
                .await
                .unwrap()
                .into_inner()
                .ready
        );
        assert!(
            !c.model_ready(ready("bad"))
                .await
                .unwrap()
                .into_inner()
                .ready
        );

        // The bearer scheme in any case and surrounding spaces, as on HTTP; other schemes,
        // an empty token or the key with a different case are refused.
        let meta = |auth: &str| {
            let mut r = tonic::Request::new(ServerMetadataRequest {});
            r.metadata_mut()
                .insert("authorization", auth.parse().unwrap());
            r
        };
        for ok in [
            format!("bearer {API_KEY}"),
            format!("BEARER {API_KEY}"),
            format!("Bearer   {API_KEY}  "),
        ] {
            c.server_metadata(meta(&ok))
                .await
                .unwrap_or_else(|e| panic!("{ok:?}: {e:?}"));
        }
        for bad in [
            format!("Basic {API_KEY}"),
            "Bearer".to_string(),
            "Bearer ".to_string(),
            format!("Bearer {}", API_KEY.to_uppercase()),
            API_KEY.to_string(),
        ] {
            assert_code(
                c.server_metadata(meta(&bad)).await,
                Code::Unauthenticated,
                "API key",
            );
        }

        // Request ids: an acceptable one is echoed, an unacceptable one (too long, or with
        // characters outside the allowed set) is replaced by a new UUID, none gets one.
        let infer_with_id = |id: Option<&str>| {
            let mut r = with_key(
                raw_request("tiny", tensor("input", "FP32", &[1, 28, 28]), f32_le(&x)),
                Some(API_KEY),
            );
            if let Some(id) = id {
                r.metadata_mut().insert("x-request-id", id.parse().unwrap());
            }
            r
        };
        let echoed = |r: &tonic::Response<ModelInferResponse>| {
            r.metadata()
                .get("x-request-id")
                .expect("x-request-id on the answer")
                .to_str()
                .unwrap()
                .to_string()
        };
        let r = c
            .model_infer(infer_with_id(Some("trace-01:ab/cd+=@")))
            .await
            .unwrap();
        assert_eq!(echoed(&r), "trace-01:ab/cd+=@");
        let long = "a".repeat(200);
        for bad in [
            Some("has space"),
            Some("semi;colon"),
            Some(long.as_str()),
            None,
        ] {
            let r = c.model_infer(infer_with_id(bad)).await.unwrap();
            let id = echoed(&r);
            assert_ne!(Some(id.as_str()), bad);
            assert!(
                uuid::Uuid::parse_str(&id).is_ok(),
                "{bad:?} -> {id:?} is not a UUID"
            );
        }
    });
    drop(s);

    // Not strict: ready once the initial load is over.
    let s = Server::spawn(
        &["--model-repository", path, "--strict-readiness=false"],
        &[],
    );
    assert_eq!(settled(&s), 200);
    block(async {
        let mut c = client(&s).await;
        assert!(
            c.server_ready(ServerReadyRequest {})
                .await
                .unwrap()
                .into_inner()
                .ready
        );
    });
}
