//! A truncated, corrupt or hostile model file gets a precise `InvalidModel` error, never a panic
//! and never an unbounded allocation.

mod common;

use common::{labels, small_cnn, small_cnn_bytes, Rng};
use models::builder::{pack_planes, Conv, ModelBuilder, Shift};
use models::format::ModelFile;
use models::graph::CodeSpec;
use models::{ErrorKind, Model, ModelError};
use proptest::prelude::*;
use serde_json::{json, Value};

fn load(bytes: Vec<u8>) -> Result<ModelFile, ModelError> {
    ModelFile::from_bytes(bytes)
}

fn invalid(bytes: Vec<u8>) -> String {
    match load(bytes) {
        Ok(_) => panic!("corrupt file was accepted"),
        Err(e) => {
            assert_eq!(e.kind, ErrorKind::InvalidModel, "{e}");
            e.message
        }
    }
}

fn header_len(bytes: &[u8]) -> usize {
    8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize
}

/// Rewrites the JSON header (keeping the data), fixing the length prefix.
fn with_header(bytes: &[u8], f: impl FnOnce(&mut Value)) -> Vec<u8> {
    let n = header_len(bytes);
    let mut header: Value = serde_json::from_slice(&bytes[8..n]).unwrap();
    f(&mut header);
    let text = header.to_string();
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(&bytes[n..]);
    out
}

/// Rewrites the graph JSON inside the metadata.
fn with_graph(bytes: &[u8], f: impl FnOnce(&mut Value)) -> Vec<u8> {
    with_header(bytes, |h| {
        let g = h["__metadata__"]["shiftserve.graph"]
            .as_str()
            .unwrap()
            .to_string();
        let mut graph: Value = serde_json::from_str(&g).unwrap();
        f(&mut graph);
        h["__metadata__"]["shiftserve.graph"] = Value::String(graph.to_string());
    })
}

#[test]
fn the_reference_file_is_valid() {
    let bytes = small_cnn_bytes(1);
    let f = load(bytes.clone()).unwrap();
    assert_eq!(f.name, "small-cnn");
    assert_eq!(f.graph.nodes.len(), 12);
    let m = Model::from_bytes(bytes).unwrap();
    assert_eq!(m.info().weight_bits, vec![2, 3, 4]);
    assert_eq!(m.info().numeric_path, "mixed");
}

#[test]
fn every_truncation_is_rejected() {
    let bytes = small_cnn_bytes(2);
    let hl = header_len(&bytes);
    for len in 0..bytes.len() {
        let msg = invalid(bytes[..len].to_vec());
        if len < 8 {
            assert!(msg.contains("too short"), "len {len}: {msg}");
        } else if len < hl {
            assert!(msg.contains("past the end"), "len {len}: {msg}");
        }
    }
    // appended garbage is rejected too (the data must end exactly at the file end)
    let mut longer = bytes.clone();
    longer.push(0);
    invalid(longer);
}

#[test]
fn every_flipped_tensor_byte_fails_the_hash() {
    let bytes = small_cnn_bytes(3);
    let hl = header_len(&bytes);
    for i in hl..bytes.len() {
        let mut b = bytes.clone();
        b[i] ^= 0x5A;
        let msg = invalid(b);
        // a flipped byte is caught by the hash, or earlier by a structural check of the tensor
        // (non-finite float, padding bit, negative-zero code)
        assert!(
            msg.contains("SHA-256")
                || msg.contains("non-finite")
                || msg.contains("padding")
                || msg.contains("negative zero"),
            "byte {i}: {msg}"
        );
    }
}

#[test]
fn flipped_header_bytes_never_panic() {
    let bytes = small_cnn_bytes(4);
    let hl = header_len(&bytes);
    let mut rejected = 0;
    for i in 0..hl {
        for mask in [0x01u8, 0x20, 0x80] {
            let mut b = bytes.clone();
            b[i] ^= mask;
            if load(b).is_err() {
                rejected += 1;
            }
        }
    }
    // free-text fields (producer, labels) may change harmlessly; structure may not
    assert!(
        rejected > hl * 3 * 8 / 10,
        "only {rejected} of {} header mutations rejected",
        hl * 3
    );
}

#[test]
fn hostile_header_lengths_and_sizes() {
    let bytes = small_cnn_bytes(5);
    let mut b = bytes.clone();
    b[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(invalid(b).contains("exceeds the limit"));
    let mut b = bytes.clone();
    b[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    assert!(invalid(b).contains("exceeds the limit"));
    // a tensor claiming an enormous shape
    let b = with_header(&bytes, |h| {
        h["fc2.bias"]["shape"] = json!([1u64 << 40, 1u64 << 40]);
    });
    assert!(invalid(b).contains("safetensors"));
    // graph input dims whose product is astronomically large
    let b = with_graph(&bytes, |g| {
        g["inputs"][0]["shape"] = json!([3, 1u64 << 20, 1u64 << 20])
    });
    let msg = invalid(b);
    assert!(
        msg.contains("too large") || msg.contains("positive integers"),
        "{msg}"
    );
    // a conv whose output would be gigantic
    let b = with_graph(&bytes, |g| {
        g["inputs"][0]["shape"] = json!([3, 4096, 4096]);
    });
    let msg = invalid(b);
    assert!(
        msg.contains("elements") || msg.contains("too large"),
        "{msg}"
    );
    // a conv whose patch matrix would be enormous although its output is small
    let b = with_graph(&bytes, |g| {
        g["inputs"][0]["shape"] = json!([1, 4000, 4000]);
        g["nodes"][0]["in_channels"] = json!(1);
        g["nodes"][0]["kernel"] = json!([1000, 1000]);
        g["nodes"][0]["padding"] = json!([0, 0]);
    });
    let msg = invalid(b);
    assert!(msg.contains("patch matrix"), "{msg}");
    // thousands of nodes
    let b = with_graph(&bytes, |g| {
        let n = g["nodes"][0].clone();
        g["nodes"] = Value::Array(vec![n; 5000]);
    });
    assert!(invalid(b).contains("exceed the limit"));
}

#[test]
fn graph_reference_errors_are_precise() {
    let bytes = small_cnn_bytes(6);
    let b = with_graph(&bytes, |g| g["nodes"][2]["inputs"][0] = json!("nope"));
    assert!(invalid(b).contains("'nope' is neither"));
    let b = with_graph(&bytes, |g| g["nodes"][3]["inputs"][1] = json!("block.add"));
    assert!(
        invalid(b).contains("'block.add' is neither"),
        "forward reference must fail"
    );
    let b = with_graph(&bytes, |g| g["nodes"][1]["name"] = json!("stem"));
    assert!(invalid(b).contains("used twice"));
    let b = with_graph(&bytes, |g| g["nodes"][4]["op"] = json!("softmax"));
    assert!(invalid(b).contains("unknown op 'softmax'"));
    let b = with_graph(&bytes, |g| g["outputs"][0]["name"] = json!("gap"));
    assert!(invalid(b).contains("last node"));
    let b = with_graph(&bytes, |g| g["nodes"][2]["in_channels"] = json!(7));
    let msg = invalid(b);
    assert!(msg.contains("channels"), "{msg}");
    let b = with_graph(&bytes, |g| g["nodes"][2]["kernel"] = json!([3]));
    assert!(invalid(b).contains("'kernel' must be [a, b]"));
    let b = with_graph(&bytes, |g| {
        g["nodes"][2]["weight"] = json!("missing.tensor")
    });
    assert!(invalid(b).contains("'missing.tensor' is not in the file"));
    let b = with_graph(&bytes, |g| g["nodes"][2]["bits"] = json!(4));
    assert!(
        invalid(b).contains("has shape"),
        "bits must match the plane tensor"
    );
}

#[test]
fn tensor_dtype_and_shape_errors_are_precise() {
    let bytes = small_cnn_bytes(7);
    // the stem weight given the scale tensor (wrong shape), the conv weight given the stem weight (wrong dtype)
    let b = with_graph(&bytes, |g| g["nodes"][0]["weight"] = json!("stem.bias"));
    assert!(invalid(b).contains("has shape [8], expected [8, 3, 3, 3]"));
    let b = with_graph(&bytes, |g| g["nodes"][2]["weight"] = json!("stem.weight"));
    assert!(invalid(b).contains("is F32, expected U8"));
    // dtypes outside F32/I32/U8
    let b = with_header(&bytes, |h| h["fc2.bias"]["dtype"] = json!("I8"));
    let msg = invalid(b);
    assert!(msg.contains("I8") || msg.contains("safetensors"), "{msg}");
    let b = with_header(&bytes, |h| {
        h["fc2.bias"]["dtype"] = json!("F16");
        h["fc2.bias"]["shape"] = json!([10]);
    });
    assert!(invalid(b).contains("only F32, I32 and U8"));
}

#[test]
fn metadata_errors_are_precise() {
    for key in [
        "shiftserve.format_version",
        "shiftserve.name",
        "shiftserve.task",
        "shiftserve.graph",
        "shiftserve.preprocess",
        "shiftserve.labels",
        "shiftserve.tensor_sha256",
        "shiftserve.producer",
    ] {
        let mut b = small_cnn(8);
        b.override_metadata(key, None);
        let msg = invalid(b.to_bytes(&labels(5), None).unwrap());
        assert!(
            msg.contains(&format!("missing metadata key '{key}'")),
            "{key}: {msg}"
        );
    }
    let cases: [(&str, &str, &str); 9] = [
        ("shiftserve.format_version", "2", "version '2'"),
        ("shiftserve.name", "Bad Name", "must match"),
        ("shiftserve.task", "translation", "unknown task"),
        ("shiftserve.labels", "[\"a\", \"b\"]", "2 labels for 5"),
        ("shiftserve.labels", "{}", "JSON array"),
        (
            "shiftserve.tensor_sha256",
            &"0".repeat(64),
            "SHA-256 mismatch",
        ),
        ("shiftserve.tensor_sha256", "ABC", "64 lowercase hex"),
        (
            "shiftserve.preprocess",
            r#"{"kind":"image","channels":1,"crop":[12,12],"mean":[0],"std":[1]}"#,
            "graph input is [3, 12, 12]",
        ),
        ("shiftserve.graph", "{not json", "not valid JSON"),
    ];
    for (key, value, expect) in cases {
        let mut b = small_cnn(8);
        b.override_metadata(key, Some(value));
        let msg = invalid(b.to_bytes(&labels(5), None).unwrap());
        assert!(msg.contains(expect), "{key}={value}: {msg}");
    }
    // spoken_intent needs intents aligned with the labels
    let mut b = small_cnn(8);
    b.override_metadata("shiftserve.task", Some("spoken_intent"));
    let msg = invalid(b.to_bytes(&labels(5), None).unwrap());
    assert!(
        msg.contains("does not fit task") || msg.contains("intents"),
        "{msg}"
    );
}

#[test]
fn the_optional_temperature_is_read_and_checked() {
    let b = small_cnn(8);
    let f = load(b.to_bytes(&labels(5), None).unwrap()).unwrap();
    assert_eq!(f.temperature, None, "no key: no temperature");
    for (text, want) in [
        ("0.598", 0.598f32),
        ("1.5", 1.5),
        (" 2 ", 2.0),
        ("1e-3", 1e-3),
    ] {
        let mut b = small_cnn(8);
        b.override_metadata("shiftserve.temperature", Some(text));
        let f = load(b.to_bytes(&labels(5), None).unwrap()).unwrap();
        assert_eq!(f.temperature, Some(want), "{text}");
        let model = Model::from_bytes(b.to_bytes(&labels(5), None).unwrap()).unwrap();
        assert_eq!(model.info().temperature, Some(want), "{text}");
    }
    for bad in ["0", "-1", "nan", "inf", "warm", ""] {
        let mut b = small_cnn(8);
        b.override_metadata("shiftserve.temperature", Some(bad));
        let msg = invalid(b.to_bytes(&labels(5), None).unwrap());
        assert!(
            msg.contains("shiftserve.temperature must be a positive finite number"),
            "{bad:?}: {msg}"
        );
    }
}

fn one_shift_layer(code: CodeSpec, bits: usize, planes: Option<Vec<u8>>) -> Vec<u8> {
    let mut r = Rng(9);
    let mut b = ModelBuilder::new(
        "planes",
        "image_classification",
        &[1, 3, 3],
        common::image_preprocess(1, 3, 3),
    );
    let c = Conv::new(1, 3, 3, 1, 0); // 3 x 9 = 27 weights: 5 padding bits per plane
    let s = r.shift(3, 9, bits, code, None);
    let out = b.shift_conv2d("conv", "input", None, c, false, &s).unwrap();
    let f = b.unary("flat", "flatten", &out);
    b.linear("fc", &f, 3, 2, false, &[1.0; 6], &[0.0; 2]);
    if let Some(p) = planes {
        b.tensor_u8("conv.weight", &[bits, p.len() / bits], &p);
    }
    b.to_bytes(&labels(2), None).unwrap()
}

#[test]
fn packed_plane_padding_and_codes_are_checked() {
    // valid planes load
    load(one_shift_layer(CodeSpec::WithZero, 3, None)).unwrap();
    // a padding bit in the last byte of plane 1
    let mut planes = pack_planes(CodeSpec::ZeroFree, 3, &[1; 27]).unwrap();
    planes[4 + 3] |= 0x80;
    let msg = invalid(one_shift_layer(CodeSpec::ZeroFree, 3, Some(planes)));
    assert!(msg.contains("padding bits"), "{msg}");
    // a with_zero negative zero: sign set, magnitude 0, at weight 10
    let mut values = vec![1; 27];
    values[10] = 0;
    let mut planes = pack_planes(CodeSpec::WithZero, 3, &values).unwrap();
    planes[1] |= 1 << 2;
    let msg = invalid(one_shift_layer(CodeSpec::WithZero, 3, Some(planes)));
    assert!(msg.contains("weight 10 is a negative zero"), "{msg}");
    // plane tensor of the wrong shape
    let msg = invalid(one_shift_layer(CodeSpec::ZeroFree, 3, Some(vec![0; 9])));
    assert!(msg.contains("has shape [3, 3], expected [3, 4]"), "{msg}");
}

#[test]
fn non_finite_parameters_are_rejected() {
    let mut b = small_cnn(10);
    let mut w = vec![0.1f32; 30];
    w[7] = f32::NAN;
    b.tensor_f32("fc2.weight", &[5, 6], &w);
    let msg = invalid(b.to_bytes(&labels(5), None).unwrap());
    assert!(msg.contains("non-finite value at index 7"), "{msg}");
}

#[test]
fn int8_layers_that_could_overflow_i32_are_refused() {
    // 4-bit zero-free weights are up to 128; 255 * 128 * K overflows i32 for K ~ 66k columns.
    let mut b = ModelBuilder::new(
        "overflow",
        "image_classification",
        &[1, 280, 250],
        common::image_preprocess(1, 280, 250),
    );
    let f = b.unary("flat", "flatten", "input");
    let s = Shift {
        bits: 4,
        code: CodeSpec::ZeroFree,
        int8: Some((0.1, 0)),
        values: vec![128; 70_000],
        scale: vec![1.0],
        bias: vec![0.0],
    };
    b.shift_linear("fc", &f, 70_000, 1, false, &s).unwrap();
    let bytes = b.to_bytes(&labels(1), None).unwrap();
    match Model::from_bytes(bytes) {
        Ok(_) => panic!("accepted a layer whose int32 accumulator can overflow"),
        Err(e) => {
            assert_eq!(e.kind, ErrorKind::InvalidModel);
            assert!(e.message.contains("overflow"), "{e}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, .. ProptestConfig::default() })]

    /// Random byte mutations and truncations anywhere in the file: never a panic; a mutation of
    /// tensor data is always rejected.
    #[test]
    fn random_mutations_never_panic(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in proptest::option::of(any::<prop::sample::Index>()),
    ) {
        let bytes = small_cnn_bytes(11);
        let hl = header_len(&bytes);
        let mut b = bytes.clone();
        let mut data_changed = false;
        for (idx, v) in &edits {
            let i = idx.index(b.len());
            if b[i] != *v && i >= hl {
                data_changed = true;
            }
            b[i] = *v;
        }
        if let Some(c) = cut {
            b.truncate(c.index(b.len()));
        }
        let result = std::panic::catch_unwind(|| Model::from_bytes(b.clone()).map(|_| ()));
        prop_assert!(result.is_ok(), "panicked");
        if let Ok(Err(e)) = &result {
            prop_assert_eq!(e.kind, ErrorKind::InvalidModel);
        }
        if data_changed && cut.is_none() && b[..8] == bytes[..8] {
            prop_assert!(result.unwrap().is_err(), "changed tensor data was accepted");
        }
    }
}
