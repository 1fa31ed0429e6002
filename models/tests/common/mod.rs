//! Small models written with `models::builder` for the loader and runtime tests.
#![allow(dead_code)]

use models::builder::{Conv, ModelBuilder, Shift};
use models::graph::CodeSpec;
use serde_json::json;

/// Deterministic pseudo-random numbers (SplitMix64).
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    pub fn sym(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 23) as f32) - 1.0
    }
    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| scale * self.sym()).collect()
    }
    pub fn pow2(&mut self, n: usize, code: CodeSpec, bits: usize) -> Vec<i32> {
        let max_m = (1u64 << (bits - 1)) - 1;
        (0..n)
            .map(|_| {
                let r = self.next_u64();
                let m = (r >> 8) % (max_m + 1);
                let sign = if r & 1 == 1 { -1 } else { 1 };
                match code {
                    CodeSpec::ZeroFree => sign * (1 << m),
                    CodeSpec::WithZero => {
                        if m == 0 {
                            0
                        } else {
                            sign * (1 << (m - 1))
                        }
                    }
                }
            })
            .collect()
    }
    pub fn shift(
        &mut self,
        rows: usize,
        cols: usize,
        bits: usize,
        code: CodeSpec,
        int8: Option<(f32, i32)>,
    ) -> Shift {
        let values = self.pow2(rows * cols, code, bits);
        let scale = (0..rows)
            .map(|_| (0.5 + 0.5 * self.sym().abs()) / (cols as f32 * 8.0).sqrt())
            .collect();
        let bias = self.vec(rows, 0.1);
        Shift {
            bits,
            code,
            int8,
            values,
            scale,
            bias,
        }
    }
}

pub fn image_preprocess(channels: usize, h: usize, w: usize) -> serde_json::Value {
    json!({"kind": "image", "channels": channels, "crop": [h, w], "invert": false,
           "mean": vec![0.5; channels], "std": vec![0.25; channels]})
}

pub fn labels(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("c{i}")).collect()
}

/// A small CNN touching most operators: fp32 conv stem, int8 and float shift convs (one grouped,
/// one with a fused residual), maxpool, avgpool, add, relu, global pool, flatten, shift linear,
/// fp32 linear. Input [3, 12, 12], 5 classes.
pub fn small_cnn(seed: u64) -> ModelBuilder {
    let mut r = Rng(seed);
    let mut b = ModelBuilder::new(
        "small-cnn",
        "image_classification",
        &[3, 12, 12],
        image_preprocess(3, 12, 12),
    );
    let stem = Conv::new(3, 8, 3, 1, 1);
    let x = b.conv2d(
        "stem",
        "input",
        stem,
        true,
        &r.vec(8 * 3 * 9, 0.4),
        &r.vec(8, 0.1),
    );
    let x = b.pool("pool1", "maxpool2d", &x, 2, 2, 0); // [8, 6, 6]
    let c1 = Conv::new(8, 8, 3, 1, 1);
    let s1 = r.shift(8, c1.k(), 3, CodeSpec::ZeroFree, Some((0.02, 0)));
    let h = b
        .shift_conv2d("block.conv1", &x, None, c1, true, &s1)
        .unwrap();
    let mut c2 = Conv::new(8, 8, 3, 1, 1);
    c2.groups = 2;
    let s2 = r.shift(8, c2.k(), 4, CodeSpec::WithZero, None);
    let y = b
        .shift_conv2d("block.conv2", &h, Some(&x), c2, true, &s2)
        .unwrap();
    let z = b.add("block.add", &y, &x, false);
    let z = b.unary("block.relu", "relu", &z);
    let z = b.pool("pool2", "avgpool2d", &z, 3, 2, 1); // [8, 3, 3]
    let c3 = Conv::new(8, 12, 1, 1, 0);
    let s3 = r.shift(12, c3.k(), 2, CodeSpec::ZeroFree, Some((0.05, 3)));
    let z = b
        .shift_conv2d("head.conv", &z, None, c3, true, &s3)
        .unwrap();
    let g = b.unary("gap", "global_avgpool", &z); // [12]
    let f = b.unary("flat", "flatten", &g);
    let s4 = r.shift(6, 12, 3, CodeSpec::ZeroFree, Some((0.03, 0)));
    let l = b.shift_linear("fc1", &f, 12, 6, true, &s4).unwrap();
    b.linear("fc2", &l, 6, 5, false, &r.vec(30, 0.5), &r.vec(5, 0.1));
    b
}

pub fn small_cnn_bytes(seed: u64) -> Vec<u8> {
    small_cnn(seed).to_bytes(&labels(5), None).unwrap()
}
