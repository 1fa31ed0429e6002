//! Per model-version statistics: Triton's cumulative counters plus latency percentiles per phase
//! over a sliding window (the last `WINDOW` seconds, at most `WINDOW_SAMPLES` samples per phase).

use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub const WINDOW: Duration = Duration::from_secs(60);
pub const WINDOW_SAMPLES: usize = 4096;

/// One phase's recent samples in milliseconds.
#[derive(Debug, Default)]
pub struct Window {
    samples: VecDeque<(Instant, f64)>,
}

impl Window {
    pub fn record(&mut self, now: Instant, ms: f64) {
        self.expire(now);
        if self.samples.len() == WINDOW_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back((now, ms));
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(t, _)) = self.samples.front() {
            if now.duration_since(t) > WINDOW {
                self.samples.pop_front();
            } else {
                break;
            }
        }
    }

    /// Nearest-rank percentiles of the samples still in the window.
    pub fn percentiles(&mut self, now: Instant) -> Percentiles {
        self.expire(now);
        let mut v: Vec<f64> = self.samples.iter().map(|&(_, x)| x).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        Percentiles {
            count: v.len(),
            p50_ms: percentile(&v, 50.0),
            p90_ms: percentile(&v, 90.0),
            p95_ms: percentile(&v, 95.0),
            p99_ms: percentile(&v, 99.0),
        }
    }
}

/// Nearest-rank percentile of sorted data; `None` when empty.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct Percentiles {
    /// Number of samples in the window.
    pub count: usize,
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

#[derive(Debug, Clone, Copy, Default, Serialize, utoipa::ToSchema)]
pub struct CountNs {
    pub count: u64,
    pub ns: u64,
}

impl CountNs {
    fn add(&mut self, d: Duration) {
        self.count += 1;
        self.ns += d.as_nanos() as u64;
    }
}

#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct InferenceStats {
    pub success: CountNs,
    pub fail: CountNs,
    pub queue: CountNs,
    pub compute_input: CountNs,
    pub compute_infer: CountNs,
    pub compute_output: CountNs,
}

#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct BatchStats {
    pub batch_size: usize,
    pub compute_input: CountNs,
    pub compute_infer: CountNs,
    pub compute_output: CountNs,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LatencyPercentiles {
    /// End to end, accepted requests.
    pub request: Percentiles,
    pub queue: Percentiles,
    pub preprocess: Percentiles,
    /// Per batch execution.
    pub inference: Percentiles,
    pub window_seconds: u64,
}

/// Triton's `model_stats` entry plus `latency_percentiles`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ModelStats {
    pub name: String,
    pub version: String,
    /// Milliseconds since the epoch of the last inference, 0 if none.
    pub last_inference: u64,
    /// Samples inferred.
    pub inference_count: u64,
    /// Batches executed.
    pub execution_count: u64,
    pub inference_stats: InferenceStats,
    pub batch_stats: Vec<BatchStats>,
    pub latency_percentiles: LatencyPercentiles,
}

#[derive(Debug, Default)]
struct Inner {
    last_inference: u64,
    inference_count: u64,
    execution_count: u64,
    inference: InferenceStats,
    batches: BTreeMap<usize, BatchStats>,
    w_request: Window,
    w_queue: Window,
    w_preprocess: Window,
    w_inference: Window,
}

#[derive(Debug, Default)]
pub struct VersionStats {
    inner: Mutex<Inner>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

impl VersionStats {
    /// A request finished successfully (`samples` inputs, timings per phase).
    pub fn request_ok(
        &self,
        total: Duration,
        queue: Duration,
        preprocess: Duration,
        output: Duration,
    ) {
        let now = Instant::now();
        let mut g = self.inner.lock().unwrap();
        g.inference.success.add(total);
        g.inference.queue.add(queue);
        g.inference.compute_input.add(preprocess);
        g.inference.compute_output.add(output);
        g.last_inference = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        g.w_request.record(now, ms(total));
        g.w_queue.record(now, ms(queue));
        g.w_preprocess.record(now, ms(preprocess));
    }

    pub fn request_failed(&self, total: Duration) {
        self.inner.lock().unwrap().inference.fail.add(total);
    }

    /// A batch of `size` samples executed in `infer`.
    pub fn batch_executed(&self, size: usize, infer: Duration) {
        let now = Instant::now();
        let mut g = self.inner.lock().unwrap();
        g.execution_count += 1;
        g.inference_count += size as u64;
        g.inference.compute_infer.add(infer);
        let b = g.batches.entry(size).or_insert_with(|| BatchStats {
            batch_size: size,
            ..Default::default()
        });
        b.compute_infer.add(infer);
        g.w_inference.record(now, ms(infer));
    }

    pub fn snapshot(&self, name: &str, version: u64) -> ModelStats {
        let now = Instant::now();
        let mut g = self.inner.lock().unwrap();
        let latency_percentiles = LatencyPercentiles {
            request: g.w_request.percentiles(now),
            queue: g.w_queue.percentiles(now),
            preprocess: g.w_preprocess.percentiles(now),
            inference: g.w_inference.percentiles(now),
            window_seconds: WINDOW.as_secs(),
        };
        ModelStats {
            name: name.to_string(),
            version: version.to_string(),
            last_inference: g.last_inference,
            inference_count: g.inference_count,
            execution_count: g.execution_count,
            inference_stats: g.inference.clone(),
            batch_stats: g.batches.values().cloned().collect(),
            latency_percentiles,
        }
    }

    /// Request latency percentiles only (for `GET /v1/models`).
    pub fn request_percentiles(&self) -> Percentiles {
        self.inner
            .lock()
            .unwrap()
            .w_request
            .percentiles(Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let v: Vec<f64> = (1..=100).map(|x| x as f64).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
        assert_eq!(percentile(&[7.0], 90.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn window_expires_and_caps() {
        let mut w = Window::default();
        let t0 = Instant::now();
        w.record(t0, 100.0);
        let later = t0 + WINDOW + Duration::from_secs(1);
        w.record(later, 1.0);
        let p = w.percentiles(later);
        assert_eq!(p.count, 1);
        assert_eq!(p.p99_ms, Some(1.0));
        for i in 0..(WINDOW_SAMPLES + 10) {
            w.record(later, i as f64);
        }
        assert_eq!(w.percentiles(later).count, WINDOW_SAMPLES);
    }

    #[test]
    fn counters_accumulate_per_batch_size() {
        let s = VersionStats::default();
        s.batch_executed(4, Duration::from_millis(2));
        s.batch_executed(4, Duration::from_millis(4));
        s.batch_executed(1, Duration::from_millis(1));
        s.request_ok(
            Duration::from_millis(5),
            Duration::from_millis(1),
            Duration::from_millis(1),
            Duration::ZERO,
        );
        s.request_failed(Duration::from_millis(1));
        let snap = s.snapshot("m", 3);
        assert_eq!(snap.version, "3");
        assert_eq!(snap.execution_count, 3);
        assert_eq!(snap.inference_count, 9);
        assert_eq!(snap.batch_stats.len(), 2);
        assert_eq!(snap.batch_stats[1].batch_size, 4);
        assert_eq!(snap.batch_stats[1].compute_infer.count, 2);
        assert_eq!(snap.batch_stats[1].compute_infer.ns, 6_000_000);
        assert_eq!(snap.inference_stats.success.count, 1);
        assert_eq!(snap.inference_stats.fail.count, 1);
        assert_eq!(snap.latency_percentiles.inference.count, 3);
        assert_eq!(snap.latency_percentiles.inference.p50_ms, Some(2.0));
        assert!(snap.last_inference > 0);
    }
}
