//! Steady state: after a session's first run (which sizes the kernel workspace), further runs
//! allocate nothing in the runtime or the shift kernels. A counting global allocator observes
//! this test binary only and captures a backtrace of every steady-state allocation.
//!
//! Convolutional models (the quantized runtime, the direct float stem, NHWC pooling and
//! conversions, the float path, the worker pool, small fp32 classifiers) must allocate nothing
//! at all. What still allocates is the third-party `gemm` crate, for the shapes where it packs
//! its operands (gemm-common 0.19 `gemm_basic_generic` allocates its packing buffers and a
//! `vec![false; mc / MR]` per call; it takes no caller workspace): the LSTMs' fp32 products,
//! and wide fp32 classifiers (ResNet-18's 1000-class head: 1 MiB per call). For the LSTM
//! fixtures the test asserts that every steady-state allocation comes from `gemm_common`, and
//! prints how many there were.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicUsize = AtomicUsize::new(0);
static BYTES: AtomicUsize = AtomicUsize::new(0);
static LARGEST: AtomicUsize = AtomicUsize::new(0);
static OUTSIDE_GEMM: Mutex<Vec<String>> = Mutex::new(Vec::new());

thread_local! {
    static IN_HOOK: Cell<bool> = const { Cell::new(false) };
}

fn note(size: usize) {
    if !COUNTING.load(Ordering::Relaxed) || IN_HOOK.with(|h| h.replace(true)) {
        return;
    }
    ALLOCS.fetch_add(1, Ordering::Relaxed);
    BYTES.fetch_add(size, Ordering::Relaxed);
    LARGEST.fetch_max(size, Ordering::Relaxed);
    let bt = std::backtrace::Backtrace::force_capture().to_string();
    if !bt.contains("gemm_common::") {
        if let Ok(mut v) = OUTSIDE_GEMM.lock() {
            v.push(format!("{size} bytes at\n{bt}"));
        }
    }
    IN_HOOK.with(|h| h.set(false));
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// (allocations, bytes, largest) during `f`.
fn count(f: impl FnOnce()) -> (usize, usize, usize) {
    ALLOCS.store(0, Ordering::SeqCst);
    BYTES.store(0, Ordering::SeqCst);
    LARGEST.store(0, Ordering::SeqCst);
    COUNTING.store(true, Ordering::SeqCst);
    f();
    COUNTING.store(false, Ordering::SeqCst);
    (
        ALLOCS.load(Ordering::SeqCst),
        BYTES.load(Ordering::SeqCst),
        LARGEST.load(Ordering::SeqCst),
    )
}

/// Runs batches 1..=batch after a warm-up.
fn check(name: &str, bytes: Vec<u8>, input_len: usize, batch: usize, gemm_allowed: bool) {
    let model = models::Model::from_bytes(bytes).unwrap();
    check_model(name, &model, input_len, batch, 2, gemm_allowed);
}

fn check_model(
    name: &str,
    model: &models::Model,
    input_len: usize,
    batch: usize,
    threads: usize,
    gemm_allowed: bool,
) {
    let xs: Vec<Vec<f32>> = (0..batch)
        .map(|i| models::synth::random_input(input_len, i as u64))
        .collect();
    let refs: Vec<&[f32]> = xs.iter().map(Vec::as_slice).collect();
    let mut s = model.session(batch, threads);
    s.run(&refs).unwrap(); // warm-up: the kernel workspace grows here
    let (n, total, largest) = count(|| {
        for k in 1..=batch {
            s.run(&refs[..k]).unwrap();
        }
    });
    eprintln!("{name}: {n} allocations ({total} bytes, largest {largest}) over {batch} runs");
    assert!(
        gemm_allowed || n == 0,
        "{name}: {n} steady-state allocations"
    );
    let outside = OUTSIDE_GEMM.lock().unwrap();
    assert!(
        outside.is_empty(),
        "{name}: {} steady-state allocations outside the gemm crate; first:\n{}",
        outside.len(),
        outside[0]
    );
}

// One test function: the counters are global, so the cases must not run concurrently.
#[test]
fn steady_state_runs_allocate_no_buffers() {
    check(
        "small_cnn",
        common::small_cnn_bytes(1),
        3 * 12 * 12,
        4,
        false,
    );
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    for (name, len, lstm) in [
        ("dense_lstm", 40 * 51, true),
        ("tt_lstm", 40 * 51, true),
        ("slu_w3", 40 * 101, false),
        ("bottleneck_w4", 3 * 32 * 32, false),
        ("tiny_w3_float", 28 * 28, false),
    ] {
        let bytes = std::fs::read(fixtures.join(format!("{name}.safetensors"))).unwrap();
        check(name, bytes, len, 3, lstm);
    }
    let cfg = models::synth::SynthConfig {
        resolution: 64,
        classes: 10,
        ..Default::default()
    };
    let resnet = models::synth::resnet18(&cfg).unwrap();
    check_model("resnet18-w3 (64 px)", &resnet, 3 * 64 * 64, 3, 2, false);
}
