//! Stable-Rust fuzzing of the request decoders: the seeds of the cargo-fuzz corpus
//! (`fuzz/corpus/<target>/seed-*`) mutated deterministically (bit flips, byte edits, chunk
//! duplication and deletion, numbers swapped for extreme ones) and fed to the same entry points
//! as the cargo-fuzz targets, which panic if a decoder panics or accepts sizes it must refuse.
//! Bounded: `DECODER_FUZZ_ITERS` mutations per target (default 20000), a few seconds in release.

use shiftserve::http::decode::fuzzing;
use std::path::Path;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const EXTREMES: [&str; 9] = [
    "0",
    "-1",
    "4294967296",
    "18446744073709551615",
    "9223372036854775807",
    "1e308",
    "10000000",
    "[]",
    "\"\"",
];

fn mutate(seed: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = v.len();
        match rng.below(7) {
            0 if len > 0 => {
                let i = rng.below(len);
                v[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                v[i] = rng.next() as u8;
            }
            2 => {
                let i = rng.below(len + 1);
                v.insert(i, b"[]{},:\"0123456789-e."[rng.below(19)]);
            }
            3 if len > 0 => {
                let a = rng.below(len);
                let b = (a + rng.below(64)).min(len);
                v.drain(a..b);
            }
            4 if len > 0 => {
                let a = rng.below(len);
                let b = (a + 1 + rng.below(256)).min(len);
                let chunk = v[a..b].to_vec();
                let at = rng.below(v.len() + 1);
                v.splice(at..at, chunk);
            }
            5 => {
                // Replace a run of digits with an extreme value.
                let digits: Vec<usize> = (0..len).filter(|&i| v[i].is_ascii_digit()).collect();
                if !digits.is_empty() {
                    let a = digits[rng.below(digits.len())];
                    let mut b = a;
                    while b < len && v[b].is_ascii_digit() {
                        b += 1;
                    }
                    let x = EXTREMES[rng.below(EXTREMES.len())].as_bytes().to_vec();
                    v.splice(a..b, x);
                }
            }
            _ => v.truncate(rng.below(len + 1)),
        }
    }
    v
}

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut out: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("seed-"))
        })
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    assert!(!out.is_empty(), "no seeds in {}", dir.display());
    out.sort();
    out
}

fn iterations() -> usize {
    std::env::var("DECODER_FUZZ_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000)
}

fn fuzz(target: &str, entry: fn(&[u8]), seed: u64) {
    let seeds = seeds(target);
    for s in &seeds {
        entry(s);
    }
    let mut rng = Rng(seed);
    for i in 0..iterations() {
        let base = &seeds[i % seeds.len()];
        let input = mutate(base, &mut rng);
        let result = std::panic::catch_unwind(|| entry(&input));
        if result.is_err() {
            let path = std::env::temp_dir().join(format!("shiftserve-{target}-crash-{i}"));
            std::fs::write(&path, &input).unwrap();
            panic!(
                "{target}: decoder panicked on mutation {i}; input written to {}",
                path.display()
            );
        }
    }
}

#[test]
fn v2_json_decoder() {
    fuzz("v2_json", fuzzing::v2_json, 0x9e3779b97f4a7c15);
}

#[test]
fn v2_binary_decoder() {
    fuzz("v2_binary", fuzzing::v2_binary, 0xd1b54a32d192ed03);
}

#[test]
fn grpc_model_infer_decoder() {
    fuzz(
        "grpc_infer",
        shiftserve::grpc::fuzzing::model_infer,
        0x2545f4914f6cdd1d,
    );
}

#[test]
fn task_body_decoder() {
    fuzz("task_body", fuzzing::task, 0xabad1dea12345678);
}
