//! Bad, hostile and mismatched inputs get the right error kind (400 / 413 / 415), checked before
//! any large allocation.

mod common;

use std::io::Cursor;

use common::labels;
use models::builder::ModelBuilder;
use models::{ErrorKind, InputLimits, MediaHint, Model};
use serde_json::json;

fn image_model() -> Model {
    Model::from_bytes(common::small_cnn_bytes(1)).unwrap()
}

fn audio_model() -> Model {
    let pre = json!({"kind": "audio", "sample_rate": 16000, "seconds": 1.0, "features": "log_mel",
        "n_fft": 512, "win_length": 400, "hop_length": 160, "window": "hann", "center": true,
        "n_mels": 40, "f_min": 20.0, "f_max": 8000.0, "log_eps": 1e-6, "normalize": "utterance"});
    let mut b = ModelBuilder::new("kws", "audio_classification", &[1, 40, 101], pre);
    let f = b.unary("flat", "flatten", "input");
    b.linear("fc", &f, 4040, 2, false, &vec![0.01; 8080], &[0.0, 0.0]);
    Model::from_bytes(b.to_bytes(&labels(2), None).unwrap()).unwrap()
}

fn png(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 7) as u8, (y * 5) as u8, 99]));
    let mut out = Vec::new();
    img.write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

fn wav(rate: u32, seconds: f32) -> Vec<u8> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut out = Cursor::new(Vec::new());
    {
        let mut w = hound::WavWriter::new(&mut out, spec).unwrap();
        for i in 0..(rate as f32 * seconds) as usize {
            w.write_sample(((i as f32 * 0.05).sin() * 8000.0) as i16)
                .unwrap();
        }
        w.finalize().unwrap();
    }
    out.into_inner()
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn kind(r: Result<Vec<f32>, models::ModelError>) -> ErrorKind {
    match r {
        Ok(_) => panic!("accepted"),
        Err(e) => e.kind,
    }
}

#[test]
fn decompression_bomb_is_refused_from_the_header() {
    // a real 8x8 PNG whose IHDR claims 100000 x 100000 pixels (CRC fixed up)
    let mut p = png(8, 8);
    p[16..20].copy_from_slice(&100_000u32.to_be_bytes());
    p[20..24].copy_from_slice(&100_000u32.to_be_bytes());
    let crc = crc32(&p[12..29]);
    p[29..33].copy_from_slice(&crc.to_be_bytes());
    let e = image_model()
        .preprocess(&p, MediaHint::Image, &InputLimits::default())
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::TooLarge, "{e}");
    assert!(e.message.contains("10000000000 pixels"), "{e}");
    // and a modest image over a tight limit
    let limits = InputLimits {
        max_pixels: 1000,
        max_audio_seconds: 30.0,
    };
    assert_eq!(
        kind(image_model().preprocess(&png(40, 30), MediaHint::Unknown, &limits)),
        ErrorKind::TooLarge
    );
    assert!(image_model()
        .preprocess(&png(40, 25), MediaHint::Unknown, &limits)
        .is_ok());
}

#[test]
fn corrupt_and_mismatched_media() {
    let m = image_model();
    let limits = InputLimits::default();
    let good = png(20, 16);
    let x = m.preprocess(&good, MediaHint::Image, &limits).unwrap();
    assert_eq!(x.len(), 3 * 12 * 12);
    // truncated image data: recognised as PNG, fails to decode
    assert_eq!(
        kind(m.preprocess(&good[..good.len() / 2], MediaHint::Image, &limits)),
        ErrorKind::BadInput
    );
    assert_eq!(
        kind(m.preprocess(&good[..20], MediaHint::Image, &limits)),
        ErrorKind::BadInput
    );
    assert_eq!(
        kind(m.preprocess(b"", MediaHint::Image, &limits)),
        ErrorKind::BadInput
    );
    assert_eq!(
        kind(m.preprocess(b"%PDF-1.7 not an image", MediaHint::Unknown, &limits)),
        ErrorKind::UnsupportedMedia
    );
    assert_eq!(
        kind(m.preprocess(&wav(16000, 0.2), MediaHint::Audio, &limits)),
        ErrorKind::UnsupportedMedia
    );
    let a = audio_model();
    assert_eq!(
        kind(a.preprocess(&good, MediaHint::Unknown, &limits)),
        ErrorKind::UnsupportedMedia
    );
    let e = a
        .preprocess(b"RIFF\x04\x00\x00\x00WAVE", MediaHint::Audio, &limits)
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::BadInput, "{e}");
}

#[test]
fn audio_limits_and_encodings() {
    let a = audio_model();
    let limits = InputLimits {
        max_pixels: 1,
        max_audio_seconds: 2.0,
    };
    // shorter and longer clips are padded / cut; a non-16k rate is resampled
    for (rate, secs) in [(16000, 0.3), (16000, 1.7), (8000, 1.0), (44100, 0.5)] {
        let x = a
            .preprocess(&wav(rate, secs), MediaHint::Audio, &limits)
            .unwrap();
        assert_eq!(x.len(), 40 * 101, "{rate} Hz {secs} s");
        let mean = x.iter().sum::<f32>() / x.len() as f32;
        assert!(mean.abs() < 1e-4, "utterance-normalized mean {mean}");
    }
    assert_eq!(
        kind(a.preprocess(&wav(16000, 2.5), MediaHint::Audio, &limits)),
        ErrorKind::TooLarge
    );
    // a data chunk claiming 4 GiB: refused from the header, nothing read or reserved
    let mut w = wav(16000, 0.1);
    let n = w.len();
    w[n - 3200 - 4..n - 3200].copy_from_slice(&0xFFFF_FFFEu32.to_le_bytes());
    assert_eq!(
        kind(a.preprocess(&w, MediaHint::Audio, &limits)),
        ErrorKind::TooLarge
    );
    // a data chunk longer than the payload: corrupt
    let mut w = wav(16000, 0.1);
    let n = w.len();
    w[n - 3200 - 4..n - 3200].copy_from_slice(&6400u32.to_le_bytes());
    assert_eq!(
        kind(a.preprocess(&w, MediaHint::Audio, &limits)),
        ErrorKind::BadInput
    );
    // absurd sample rates are refused before the resampler is built
    for rate in [1u32, 999, 400_000, u32::MAX] {
        let mut w = wav(16000, 0.1);
        w[24..28].copy_from_slice(&rate.to_le_bytes());
        // (hound itself rejects some of these headers as inconsistent: 400 rather than 415)
        let k = kind(a.preprocess(&w, MediaHint::Audio, &limits));
        assert!(k != ErrorKind::Internal, "{rate} Hz: {k:?}");
    }
    // an ADPCM format tag
    let mut w = wav(16000, 0.1);
    w[20..22].copy_from_slice(&2u16.to_le_bytes());
    let k = kind(a.preprocess(&w, MediaHint::Audio, &limits));
    assert!(
        k == ErrorKind::UnsupportedMedia || k == ErrorKind::BadInput,
        "{k:?}"
    );
}
