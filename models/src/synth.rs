//! Synthetic models with random low-variance weights, for benchmarks (`shiftserve bench`) when
//! no trained model is at hand. They go through the same file format, validation and planning
//! as any exported model.

use serde_json::json;

use crate::builder::{Conv, ModelBuilder, Shift};
use crate::error::ModelError;
use crate::graph::CodeSpec;
use crate::Model;

/// Options of the synthetic ResNet-18.
#[derive(Debug, Clone, Copy)]
pub struct SynthConfig {
    pub seed: u64,
    /// Weight bits (zero-free code: 2, 3 or 4).
    pub bits: usize,
    /// `true`: 8-bit activations and integer accumulators; `false`: the float path.
    pub int8: bool,
    /// Input side (224 for ImageNet).
    pub resolution: usize,
    pub classes: usize,
    /// Build the full-precision twin instead: every shift conv becomes an fp32 `conv2d` with
    /// weights `value * scale` (same random draw), residuals through `add` nodes. The baseline
    /// of the benchmarks.
    pub fp32: bool,
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig {
            seed: 0,
            bits: 3,
            int8: true,
            resolution: 224,
            classes: 1000,
            fp32: false,
        }
    }
}

/// SplitMix64: small, deterministic, good enough for random weights.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Approximately standard normal (sum of 4 uniforms, rescaled).
    fn normal(&mut self) -> f32 {
        let s: f32 = (0..4).map(|_| self.uniform()).sum::<f32>() - 2.0;
        s * (3.0f32).sqrt()
    }
}

fn shift_layer(rng: &mut Rng, rows: usize, cols: usize, bits: usize, int8: bool) -> Shift {
    let max_m = (1u32 << (bits - 1)) - 1;
    let values: Vec<i32> = (0..rows * cols)
        .map(|_| {
            let r = rng.next_u64();
            let m = (r >> 1) as u32 % (max_m + 1);
            let v = 1i32 << m;
            if r & 1 == 1 {
                -v
            } else {
                v
            }
        })
        .collect();
    // E[w^2] over the uniform code; scale keeps unit-variance activations.
    let ew2: f64 = (0..=max_m).map(|m| 4f64.powi(m as i32)).sum::<f64>() / (max_m + 1) as f64;
    let base = (2.0 / (cols as f64 * ew2)).sqrt() as f32;
    let scale = (0..rows)
        .map(|_| base * (1.0 + 0.05 * rng.normal()))
        .collect();
    let bias = (0..rows).map(|_| 0.01 * rng.normal()).collect();
    Shift {
        bits,
        code: CodeSpec::ZeroFree,
        int8: if int8 { Some((6.0 / 255.0, 0)) } else { None },
        values,
        scale,
        bias,
    }
}

/// A shift conv, or its fp32 twin (`conv2d` with weights `value * scale`, residual via `add`).
#[allow(clippy::too_many_arguments)]
fn conv_or_twin(
    b: &mut ModelBuilder,
    fp32: bool,
    name: &str,
    x: &str,
    residual: Option<&str>,
    c: Conv,
    relu: bool,
    s: &Shift,
) -> Result<String, ModelError> {
    if !fp32 {
        return b.shift_conv2d(name, x, residual, c, relu, s);
    }
    let k = c.k();
    let w: Vec<f32> = s
        .values
        .iter()
        .enumerate()
        .map(|(i, &v)| v as f32 * s.scale[i / k])
        .collect();
    match residual {
        None => Ok(b.conv2d(name, x, c, relu, &w, &s.bias)),
        Some(r) => {
            let y = b.conv2d(&format!("{name}.conv"), x, c, false, &w, &s.bias);
            Ok(b.add(name, &y, r, relu))
        }
    }
}

fn normal_vec(rng: &mut Rng, n: usize, std: f32) -> Vec<f32> {
    (0..n).map(|_| std * rng.normal()).collect()
}

/// The file bytes of a ResNet-18 (ImageNet stem: 7x7/2 fp32 conv + 3x3/2 maxpool; four stages of
/// two BasicBlocks with shift convs and 1x1 shift downsamples; fp32 classifier).
pub fn resnet18_bytes(cfg: &SynthConfig) -> Result<Vec<u8>, ModelError> {
    let mut rng = Rng(cfg.seed ^ 0x5EED_0000_0000_0018);
    let res = cfg.resolution;
    let pre = json!({"kind": "image", "channels": 3, "resize": (res * 8).div_ceil(7), "crop": [res, res], "invert": false,
        "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]});
    let mut b = ModelBuilder::new(
        &format!("synth-resnet18-w{}", cfg.bits),
        "image_classification",
        &[3, res, res],
        pre,
    );
    b.description(&format!(
        "synthetic ResNet-18 W{} ({} path), random low-variance weights, seed {}",
        cfg.bits,
        if cfg.int8 { "int8" } else { "float" },
        cfg.seed
    ));
    let stem = Conv::new(3, 64, 7, 2, 3);
    let w = normal_vec(&mut rng, 64 * 3 * 49, (2.0 / (3.0 * 49.0f32)).sqrt());
    let bias = normal_vec(&mut rng, 64, 0.01);
    let mut x = b.conv2d("stem", "input", stem, true, &w, &bias);
    x = b.pool("maxpool", "maxpool2d", &x, 3, 2, 1);
    let mut c_in = 64;
    for (stage, &c_out) in [64usize, 128, 256, 512].iter().enumerate() {
        for block in 0..2 {
            let stride = if stage > 0 && block == 0 { 2 } else { 1 };
            let name = format!("layer{}.{block}", stage + 1);
            let c1 = Conv::new(c_in, c_out, 3, stride, 1);
            let s1 = shift_layer(&mut rng, c_out, c1.k(), cfg.bits, cfg.int8);
            let h = conv_or_twin(
                &mut b,
                cfg.fp32,
                &format!("{name}.conv1"),
                &x,
                None,
                c1,
                true,
                &s1,
            )?;
            let residual = if stride != 1 || c_in != c_out {
                let cd = Conv::new(c_in, c_out, 1, stride, 0);
                let sd = shift_layer(&mut rng, c_out, cd.k(), cfg.bits, cfg.int8);
                conv_or_twin(
                    &mut b,
                    cfg.fp32,
                    &format!("{name}.downsample"),
                    &x,
                    None,
                    cd,
                    false,
                    &sd,
                )?
            } else {
                x.clone()
            };
            let c2 = Conv::new(c_out, c_out, 3, 1, 1);
            let s2 = shift_layer(&mut rng, c_out, c2.k(), cfg.bits, cfg.int8);
            x = conv_or_twin(
                &mut b,
                cfg.fp32,
                &format!("{name}.conv2"),
                &h,
                Some(&residual),
                c2,
                true,
                &s2,
            )?;
            c_in = c_out;
        }
    }
    x = b.unary("avgpool", "global_avgpool", &x);
    let fc_w = normal_vec(&mut rng, cfg.classes * 512, (1.0 / 512.0f32).sqrt());
    let fc_b = normal_vec(&mut rng, cfg.classes, 0.01);
    b.linear("fc", &x, 512, cfg.classes, false, &fc_w, &fc_b);
    let labels: Vec<String> = (0..cfg.classes).map(|i| format!("class_{i}")).collect();
    b.to_bytes(&labels, None)
}

/// A planned synthetic ResNet-18.
pub fn resnet18(cfg: &SynthConfig) -> Result<Model, ModelError> {
    Model::from_bytes(resnet18_bytes(cfg)?)
}

/// A synthetic ResNet-18 planned with explicit options.
pub fn resnet18_with(cfg: &SynthConfig, opts: &crate::PlanOptions) -> Result<Model, ModelError> {
    Model::from_bytes_with(resnet18_bytes(cfg)?, opts)
}

/// ResNet-18 224x224, W3 zero-free, int8 path, random low-variance weights.
///
/// # Panics
/// Only if the kernels cannot run on this machine (e.g. `SHIFTSERVE_KERNEL` names an instruction
/// set the CPU lacks); use [`resnet18`] to get that as an error instead.
pub fn resnet18_w3(seed: u64) -> Model {
    match resnet18(&SynthConfig {
        seed,
        ..SynthConfig::default()
    }) {
        Ok(m) => m,
        Err(e) => panic!("synthetic ResNet-18 could not be built: {e}"),
    }
}

/// A random input for a synthetic image model (`[3, res, res]`, roughly normalized pixels).
pub fn random_input(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng(seed);
    (0..len).map(|_| rng.normal()).collect()
}
