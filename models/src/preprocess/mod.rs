//! Preprocessing declared in the model file (`shiftserve.preprocess`, docs/format.md): media
//! sniffing, then the image or audio front end.

pub mod audio;
pub mod image;

use serde_json::{Map, Value};

use crate::error::{bad_input, invalid, unsupported, ModelError};
use crate::{InputLimits, MediaHint, Task};

/// Largest `resize` / crop side accepted in a spec.
pub const MAX_IMAGE_SIDE: usize = 4096;
/// Longest clip a model may declare.
pub const MAX_MODEL_SECONDS: f64 = 120.0;

/// Image preprocessing parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageSpec {
    /// 1 (luma) or 3 (RGB).
    pub channels: usize,
    /// Shorter side after resizing; `None` resizes straight to `crop`.
    pub resize: Option<usize>,
    /// `(height, width)` of the center crop (the model input).
    pub crop: (usize, usize),
    pub invert: bool,
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    /// `background: "auto"`: alpha over the picture's own background, polarity and level decided
    /// from its border (channels 1 only).
    pub auto_background: bool,
    /// `frame`: the object's bounding box resized and centred (needs `auto_background`).
    pub frame: Option<Frame>,
}

/// `frame` of an image spec: the object (pixels more than `threshold` levels above the
/// normalised background) is cut to its bounding box, resized so that its longer side is `fit`
/// (aspect kept) and centred on the crop canvas.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Frame {
    pub fit: usize,
    pub threshold: f32,
}

/// Feature normalisation of the audio front end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Normalize {
    None,
    Utterance,
}

/// Audio preprocessing parameters (log-mel features).
#[derive(Debug, Clone, PartialEq)]
pub struct AudioSpec {
    pub sample_rate: u32,
    pub seconds: f64,
    pub n_fft: usize,
    pub win_length: usize,
    pub hop_length: usize,
    pub center: bool,
    pub n_mels: usize,
    pub f_min: f64,
    pub f_max: f64,
    pub log_eps: f64,
    pub normalize: Normalize,
}

impl AudioSpec {
    /// Samples after padding / cutting: `seconds * sample_rate`.
    pub fn samples(&self) -> usize {
        (self.seconds * self.sample_rate as f64).round() as usize
    }

    /// STFT frames.
    pub fn frames(&self) -> usize {
        let n = self.samples();
        if self.center {
            1 + n / self.hop_length
        } else {
            1 + (n - self.n_fft) / self.hop_length
        }
    }
}

/// The parsed `shiftserve.preprocess` spec.
#[derive(Debug, Clone, PartialEq)]
pub enum PreprocessSpec {
    Image(ImageSpec),
    Audio(AudioSpec),
}

impl PreprocessSpec {
    /// `"image"` or `"audio"`.
    pub fn kind(&self) -> &'static str {
        match self {
            PreprocessSpec::Image(_) => "image",
            PreprocessSpec::Audio(_) => "audio",
        }
    }

    /// Parses and checks the spec JSON.
    pub fn parse(text: &str) -> Result<PreprocessSpec, ModelError> {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| invalid(format!("shiftserve.preprocess is not valid JSON: {e}")))?;
        let o = v
            .as_object()
            .ok_or_else(|| invalid("shiftserve.preprocess must be a JSON object"))?;
        let f = Fields(o);
        match f.str("kind")? {
            "image" => {
                let channels = f.uint("channels", 1, 3)?;
                if channels != 1 && channels != 3 {
                    return Err(invalid("preprocess: channels must be 1 or 3"));
                }
                let resize = match o.get("resize") {
                    None | Some(Value::Null) => None,
                    Some(_) => Some(f.uint("resize", 1, MAX_IMAGE_SIDE)?),
                };
                let crop = match o.get("crop").and_then(Value::as_array) {
                    Some(a) if a.len() == 2 => {
                        let side = |v: &Value| {
                            v.as_u64()
                                .filter(|&x| x >= 1 && x <= MAX_IMAGE_SIDE as u64)
                                .map(|x| x as usize)
                        };
                        match (side(&a[0]), side(&a[1])) {
                            (Some(h), Some(w)) => (h, w),
                            _ => {
                                return Err(invalid(format!(
                                    "preprocess: crop sides must be in 1..={MAX_IMAGE_SIDE}"
                                )))
                            }
                        }
                    }
                    _ => return Err(invalid("preprocess: crop must be [height, width]")),
                };
                let invert = match o.get("invert") {
                    None => false,
                    Some(v) => v
                        .as_bool()
                        .ok_or_else(|| invalid("preprocess: invert must be a boolean"))?,
                };
                let mean = f.floats("mean", channels)?;
                let std = f.floats("std", channels)?;
                if std
                    .iter()
                    .any(|&s| s.is_nan() || s <= 0.0 || !s.is_normal())
                {
                    return Err(invalid("preprocess: std values must be positive"));
                }
                let auto_background = match o.get("background") {
                    None | Some(Value::Null) => false,
                    Some(v) => match v.as_str() {
                        Some("auto") => true,
                        Some("none") => false,
                        _ => {
                            return Err(invalid(
                                "preprocess: background must be \"auto\" or \"none\"",
                            ))
                        }
                    },
                };
                if auto_background && (channels != 1 || invert) {
                    return Err(invalid(
                        "preprocess: background \"auto\" needs channels 1 and no invert (it decides the polarity)",
                    ));
                }
                let frame =
                    match o.get("frame") {
                        None | Some(Value::Null) => None,
                        Some(Value::Object(fo)) => {
                            let ff = Fields(fo);
                            let fit = ff.uint("fit", 1, crop.0.min(crop.1)).map_err(|_| {
                                invalid("preprocess: frame.fit must be an integer in 1..=min(crop)")
                            })?;
                            let threshold = ff.float("threshold").map_err(|_| {
                                invalid("preprocess: frame.threshold must be a number in [0, 255)")
                            })?;
                            if !(0.0..255.0).contains(&threshold) {
                                return Err(invalid(
                                    "preprocess: frame.threshold must be a number in [0, 255)",
                                ));
                            }
                            if !auto_background || resize.is_some() {
                                return Err(invalid(
                                "preprocess: frame needs background \"auto\" and replaces resize",
                            ));
                            }
                            Some(Frame {
                                fit,
                                threshold: threshold as f32,
                            })
                        }
                        Some(_) => return Err(invalid(
                            "preprocess: frame must be an object {\"fit\": n, \"threshold\": t}",
                        )),
                    };
                Ok(PreprocessSpec::Image(ImageSpec {
                    channels,
                    resize,
                    crop,
                    invert,
                    mean,
                    std,
                    auto_background,
                    frame,
                }))
            }
            "audio" => {
                let sample_rate = f.uint("sample_rate", 1000, 384_000)? as u32;
                let seconds = f.float("seconds")?;
                if !(seconds > 0.0 && seconds <= MAX_MODEL_SECONDS) {
                    return Err(invalid(format!(
                        "preprocess: seconds must be in (0, {MAX_MODEL_SECONDS}]"
                    )));
                }
                let features = f.str("features")?;
                if features != "log_mel" {
                    return Err(invalid(format!(
                        "preprocess: features '{features}' is not supported (log_mel)"
                    )));
                }
                let n_fft = f.uint("n_fft", 2, 16_384)?;
                let win_length = match o.get("win_length") {
                    None | Some(Value::Null) => n_fft,
                    Some(_) => f.uint("win_length", 1, n_fft)?,
                };
                let hop_length = f.uint("hop_length", 1, 16_384)?;
                let window = f.str("window")?;
                if window != "hann" {
                    return Err(invalid(format!(
                        "preprocess: window '{window}' is not supported (hann)"
                    )));
                }
                let center = match o.get("center") {
                    None => true,
                    Some(v) => v
                        .as_bool()
                        .ok_or_else(|| invalid("preprocess: center must be a boolean"))?,
                };
                let n_mels = f.uint("n_mels", 1, 512)?;
                let f_min = f.float("f_min")?;
                let f_max = f.float("f_max")?;
                if !(f_min >= 0.0 && f_min < f_max && f_max <= sample_rate as f64 / 2.0) {
                    return Err(invalid(
                        "preprocess: need 0 <= f_min < f_max <= sample_rate/2",
                    ));
                }
                let log_eps = f.float("log_eps")?;
                if log_eps.is_nan() || log_eps <= 0.0 {
                    return Err(invalid("preprocess: log_eps must be positive"));
                }
                let normalize = match o.get("normalize") {
                    None | Some(Value::Null) => Normalize::None,
                    Some(v) => match v.as_str() {
                        Some("utterance") => Normalize::Utterance,
                        Some("none") => Normalize::None,
                        _ => {
                            return Err(invalid(
                                "preprocess: normalize must be \"utterance\" or \"none\"",
                            ))
                        }
                    },
                };
                let spec = AudioSpec {
                    sample_rate,
                    seconds,
                    n_fft,
                    win_length,
                    hop_length,
                    center,
                    n_mels,
                    f_min,
                    f_max,
                    log_eps,
                    normalize,
                };
                let n = spec.samples();
                if center && n_fft / 2 >= n {
                    return Err(invalid(
                        "preprocess: the reflection padding n_fft/2 must be shorter than the clip",
                    ));
                }
                if !center && n < n_fft {
                    return Err(invalid("preprocess: the clip is shorter than n_fft"));
                }
                Ok(PreprocessSpec::Audio(spec))
            }
            other => Err(invalid(format!(
                "preprocess: unknown kind '{other}' (image or audio)"
            ))),
        }
    }

    /// The spec must fit the task and produce exactly the graph input shape.
    pub fn check_against(&self, task: Task, input_shape: &[usize]) -> Result<(), ModelError> {
        let expected: Vec<usize> = match (self, task) {
            (PreprocessSpec::Image(s), Task::ImageClassification) => {
                vec![s.channels, s.crop.0, s.crop.1]
            }
            (PreprocessSpec::Audio(s), Task::SpokenIntent | Task::AudioClassification) => {
                vec![1, s.n_mels, s.frames()]
            }
            _ => {
                return Err(invalid(format!(
                    "preprocess kind '{}' does not fit task '{}'",
                    self.kind(),
                    task.as_str()
                )))
            }
        };
        if expected != input_shape {
            return Err(invalid(format!(
                "preprocessing produces {expected:?} but the graph input is {input_shape:?}"
            )));
        }
        Ok(())
    }

    /// Whether preprocessing `data` is certainly small work (well under 100 µs here): an image
    /// of at most [`SMALL_WORK_PIXELS`] declared pixels, at most [`SMALL_WORK_BYTES`] encoded,
    /// for a spec whose output is at most [`SMALL_WORK_PIXELS`] values. Reads only the image
    /// header. A server may run such work inline instead of handing it to another thread (a
    /// hand-off costs two thread wake-ups, more than the work itself); anything else, audio
    /// included, answers false.
    pub fn is_small_work(&self, data: &[u8]) -> bool {
        let PreprocessSpec::Image(spec) = self else {
            return false;
        };
        if data.len() > SMALL_WORK_BYTES
            || spec.channels * spec.crop.0 * spec.crop.1 > SMALL_WORK_PIXELS
        {
            return false;
        }
        match sniff(data) {
            Some(m) if m.is_image() => {
                image::declared_pixels(data, m).is_some_and(|p| p <= SMALL_WORK_PIXELS as u64)
            }
            _ => false,
        }
    }

    /// Decodes and featurizes one payload.
    pub fn run(
        &self,
        data: &[u8],
        hint: MediaHint,
        limits: &InputLimits,
    ) -> Result<Vec<f32>, ModelError> {
        if data.is_empty() {
            return Err(bad_input("empty input"));
        }
        let media = sniff(data);
        let wants = self.kind();
        match (media, self) {
            (Some(m), PreprocessSpec::Image(spec)) if m.is_image() => {
                image::preprocess(spec, data, m, limits)
            }
            (Some(Media::Wav), PreprocessSpec::Audio(spec)) => {
                audio::preprocess(spec, data, limits)
            }
            (Some(m), _) => Err(unsupported(format!(
                "this model takes {wants} input; got {}",
                m.describe()
            ))),
            (None, _) => {
                let said = match hint {
                    MediaHint::Image => " (declared as an image)",
                    MediaHint::Audio => " (declared as audio)",
                    MediaHint::Unknown => "",
                };
                let accepted = match self {
                    PreprocessSpec::Image(_) => "PNG, JPEG, WebP, BMP or GIF",
                    PreprocessSpec::Audio(_) => "WAV",
                };
                Err(unsupported(format!(
                    "unrecognized media type{said}; this model takes {accepted}"
                )))
            }
        }
    }
}

/// Largest declared image (pixels) and model input (values) [`PreprocessSpec::is_small_work`]
/// calls small: 128 x 128.
pub const SMALL_WORK_PIXELS: usize = 128 * 128;
/// Largest encoded payload [`PreprocessSpec::is_small_work`] calls small.
pub const SMALL_WORK_BYTES: usize = 64 << 10;

/// A media type recognized from its magic bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Media {
    Png,
    Jpeg,
    Gif,
    Bmp,
    WebP,
    Wav,
}

impl Media {
    pub fn is_image(&self) -> bool {
        !matches!(self, Media::Wav)
    }

    pub fn describe(&self) -> &'static str {
        match self {
            Media::Png => "a PNG image",
            Media::Jpeg => "a JPEG image",
            Media::Gif => "a GIF image",
            Media::Bmp => "a BMP image",
            Media::WebP => "a WebP image",
            Media::Wav => "WAV audio",
        }
    }
}

/// Recognizes a payload from its first bytes.
pub fn sniff(data: &[u8]) -> Option<Media> {
    if data.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some(Media::Png)
    } else if data.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some(Media::Jpeg)
    } else if data.starts_with(b"GIF87a") || data.starts_with(b"GIF89a") {
        Some(Media::Gif)
    } else if data.starts_with(b"BM") && data.len() >= 26 {
        Some(Media::Bmp)
    } else if data.len() >= 12 && &data[..4] == b"RIFF" && &data[8..12] == b"WEBP" {
        Some(Media::WebP)
    } else if data.len() >= 12
        && (&data[..4] == b"RIFF" || &data[..4] == b"RIFX")
        && &data[8..12] == b"WAVE"
    {
        Some(Media::Wav)
    } else {
        None
    }
}

struct Fields<'a>(&'a Map<String, Value>);

impl Fields<'_> {
    fn str(&self, key: &str) -> Result<&str, ModelError> {
        self.0
            .get(key)
            .and_then(Value::as_str)
            .ok_or_else(|| invalid(format!("preprocess: '{key}' must be a string")))
    }

    fn uint(&self, key: &str, min: usize, max: usize) -> Result<usize, ModelError> {
        self.0
            .get(key)
            .and_then(Value::as_u64)
            .filter(|&x| x >= min as u64 && x <= max as u64)
            .map(|x| x as usize)
            .ok_or_else(|| {
                invalid(format!(
                    "preprocess: '{key}' must be an integer in {min}..={max}"
                ))
            })
    }

    fn float(&self, key: &str) -> Result<f64, ModelError> {
        self.0
            .get(key)
            .and_then(Value::as_f64)
            .filter(|x| x.is_finite())
            .ok_or_else(|| invalid(format!("preprocess: '{key}' must be a finite number")))
    }

    fn floats(&self, key: &str, n: usize) -> Result<Vec<f32>, ModelError> {
        let bad = || {
            invalid(format!(
                "preprocess: '{key}' must be an array of {n} finite numbers"
            ))
        };
        let a = self.0.get(key).and_then(Value::as_array).ok_or_else(bad)?;
        if a.len() != n {
            return Err(bad());
        }
        a.iter()
            .map(|v| {
                v.as_f64()
                    .map(|x| x as f32)
                    .filter(|x| x.is_finite())
                    .ok_or_else(bad)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_magic_bytes() {
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\n...."), Some(Media::Png));
        assert_eq!(sniff(&[0xFF, 0xD8, 0xFF, 0xE0]), Some(Media::Jpeg));
        assert_eq!(sniff(b"GIF89a......"), Some(Media::Gif));
        assert_eq!(sniff(b"RIFF\x10\x00\x00\x00WEBPVP8 "), Some(Media::WebP));
        assert_eq!(sniff(b"RIFF\x10\x00\x00\x00WAVEfmt "), Some(Media::Wav));
        assert_eq!(sniff(b"hello world, not media"), None);
    }

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img =
            ::image::GrayImage::from_fn(w, h, |x, y| ::image::Luma([((x * 7 + y) % 256) as u8]));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, ::image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    #[test]
    fn small_work_is_a_small_image_for_a_small_input() {
        let spec = |crop: usize, channels: usize| {
            let mean = vec!["0.5"; channels].join(",");
            PreprocessSpec::parse(&format!(
                r#"{{"kind":"image","channels":{channels},"crop":[{crop},{crop}],"mean":[{mean}],"std":[{mean}]}}"#
            ))
            .unwrap()
        };
        let small = spec(28, 1);
        assert!(small.is_small_work(&png(28, 28)));
        assert!(
            small.is_small_work(&png(128, 128)),
            "the limit is inclusive"
        );
        assert!(
            !small.is_small_work(&png(129, 128)),
            "declared pixels over the limit"
        );
        assert!(
            !small.is_small_work(&png(20000, 1)),
            "a long thin picture counts its pixels"
        );
        // A PNG signature with an unreadable header is not called small (it goes the long way
        // and gets its error there).
        assert!(!small.is_small_work(b"\x89PNG\r\n\x1a\nnot a header at all"));
        assert!(!small.is_small_work(b"hello"));
        let mut padded = png(28, 28);
        padded.resize(SMALL_WORK_BYTES + 1, 0);
        assert!(!small.is_small_work(&padded), "encoded size over the limit");
        // A model whose input is large does large work even for a small picture.
        assert!(!spec(224, 3).is_small_work(&png(28, 28)));
        let audio = PreprocessSpec::parse(
            r#"{"kind": "audio", "sample_rate": 8000, "seconds": 1.0, "features": "log_mel",
 "n_fft": 256, "win_length": 200, "hop_length": 80, "window": "hann", "center": true,
 "n_mels": 32, "f_min": 20.0, "f_max": 4000.0, "log_eps": 1e-6, "normalize": "utterance"}"#,
        )
        .unwrap();
        let mut wav = b"RIFF\x24\x00\x00\x00WAVEfmt ".to_vec();
        wav.resize(64, 0);
        assert!(!audio.is_small_work(&wav));
        assert!(!audio.is_small_work(&png(28, 28)));
    }

    #[test]
    fn parses_image_and_audio_specs() {
        let s = PreprocessSpec::parse(
            r#"{"kind": "image", "channels": 1, "resize": 32, "crop": [28, 28], "invert": false, "mean": [0.2860], "std": [0.3530]}"#,
        )
        .unwrap();
        s.check_against(Task::ImageClassification, &[1, 28, 28])
            .unwrap();
        assert!(s
            .check_against(Task::ImageClassification, &[3, 28, 28])
            .is_err());
        assert!(s.check_against(Task::SpokenIntent, &[1, 28, 28]).is_err());
        let a = PreprocessSpec::parse(
            r#"{"kind": "audio", "sample_rate": 16000, "seconds": 2.0, "features": "log_mel",
 "n_fft": 512, "win_length": 400, "hop_length": 160, "window": "hann", "center": true,
 "n_mels": 40, "f_min": 20.0, "f_max": 8000.0, "log_eps": 1e-6, "normalize": "utterance"}"#,
        )
        .unwrap();
        a.check_against(Task::SpokenIntent, &[1, 40, 201]).unwrap();
        assert!(PreprocessSpec::parse(
            r#"{"kind":"image","channels":2,"crop":[2,2],"mean":[0,0],"std":[1,1]}"#
        )
        .is_err());
        assert!(PreprocessSpec::parse(
            r#"{"kind":"image","channels":1,"crop":[2,2],"mean":[0],"std":[0]}"#
        )
        .is_err());
        assert!(PreprocessSpec::parse(r#"{"kind":"video"}"#).is_err());
    }

    #[test]
    fn parses_and_checks_object_specs() {
        let base =
            r#""kind": "image", "channels": 1, "crop": [28, 28], "mean": [0.3], "std": [0.3]"#;
        let parse = |extra: &str| PreprocessSpec::parse(&format!("{{{base}{extra}}}"));
        let PreprocessSpec::Image(s) =
            parse(r#", "background": "auto", "frame": {"fit": 20, "threshold": 24}"#).unwrap()
        else {
            panic!("not an image spec")
        };
        assert!(s.auto_background);
        assert_eq!(
            s.frame,
            Some(Frame {
                fit: 20,
                threshold: 24.0
            })
        );
        let PreprocessSpec::Image(s) = parse("").unwrap() else {
            panic!("not an image spec")
        };
        assert!(!s.auto_background && s.frame.is_none());
        for bad in [
            r#", "background": "white""#,
            r#", "background": "auto", "invert": true"#,
            r#", "frame": {"fit": 20, "threshold": 24}"#,
            r#", "background": "auto", "resize": 32, "frame": {"fit": 20, "threshold": 24}"#,
            r#", "background": "auto", "frame": {"fit": 29, "threshold": 24}"#,
            r#", "background": "auto", "frame": {"fit": 0, "threshold": 24}"#,
            r#", "background": "auto", "frame": {"fit": 20, "threshold": 255}"#,
            r#", "background": "auto", "frame": {"fit": 20}"#,
            r#", "background": "auto", "frame": 28"#,
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.to_string().contains("preprocess"), "{bad}: {e}");
        }
        let rgb = r#"{"kind": "image", "channels": 3, "crop": [8, 8], "mean": [0, 0, 0], "std": [1, 1, 1], "background": "auto"}"#;
        assert!(PreprocessSpec::parse(rgb).is_err());
    }
}
