//! Caller-owned scratch memory: grows on first use, then reused (no allocation per call).

use std::ops::{Deref, DerefMut};

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// A cache-line aligned byte buffer.
#[derive(Default)]
pub struct AlignedBuf {
    lines: Vec<Line>,
}

impl AlignedBuf {
    fn ensure(&mut self, bytes: usize) {
        let n = bytes.div_ceil(64);
        if self.lines.len() < n {
            self.lines.resize(n, Line([0; 64]));
        }
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `Line` is 64 plain bytes with no padding.
        unsafe {
            std::slice::from_raw_parts(self.lines.as_ptr() as *const u8, self.lines.len() * 64)
        }
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.lines.as_mut_ptr() as *mut u8,
                self.lines.len() * 64,
            )
        }
    }
}

/// Per-thread kernel tables (activation product tables).
#[derive(Default)]
pub struct Scratch {
    bufs: Vec<AlignedBuf>,
}

impl Scratch {
    pub fn new() -> Self {
        Self::default()
    }
    /// `threads` buffers of at least `bytes` bytes each.
    pub(crate) fn buffers(&mut self, threads: usize, bytes: usize) -> &mut [AlignedBuf] {
        if self.bufs.len() < threads {
            self.bufs.resize_with(threads, AlignedBuf::default);
        }
        for b in &mut self.bufs[..threads] {
            b.ensure(bytes.max(1));
        }
        &mut self.bufs[..threads]
    }
}

/// Scratch memory for layer `forward` calls. One per session (not shared between threads that
/// run layers concurrently); it grows to the largest layer on first use and is then reused.
#[derive(Default)]
pub struct Workspace {
    pub(crate) q: Vec<u8>,
    pub(crate) cols8: Vec<u8>,
    pub(crate) xf: Vec<f32>,
    pub(crate) colsf: Vec<f32>,
    pub(crate) acc_i: Vec<i32>,
    pub(crate) acc_f: Vec<f32>,
    pub(crate) row8: Vec<u8>,
    pub(crate) rowf: Vec<f32>,
    pub(crate) scratch: Vec<Scratch>,
}

impl Workspace {
    pub fn new() -> Self {
        Self::default()
    }
    /// Bytes currently held.
    pub fn allocated_bytes(&self) -> usize {
        self.q.capacity()
            + self.row8.capacity()
            + 4 * self.rowf.capacity()
            + self.cols8.capacity()
            + 4 * (self.xf.capacity()
                + self.colsf.capacity()
                + self.acc_i.capacity()
                + self.acc_f.capacity())
            + self
                .scratch
                .iter()
                .map(|s| s.bufs.iter().map(|b| b.len()).sum::<usize>())
                .sum::<usize>()
    }
}

/// Resizes `v` to exactly `n` elements, reusing capacity.
pub(crate) fn sized<T: Copy + Default>(v: &mut Vec<T>, n: usize) -> &mut [T] {
    if v.len() < n {
        v.resize(n, T::default());
    }
    &mut v[..n]
}
