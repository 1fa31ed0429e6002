//! Prometheus metrics (names fixed in docs/metrics.md).

use crate::error::Reason;
use prometheus::{
    CounterVec, Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::time::Duration;

/// Seconds; dense between 0.5 ms and 1 s.
pub const LATENCY_BUCKETS: [f64; 26] = [
    0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03,
    0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 10.0,
];
pub const BATCH_BUCKETS: [f64; 11] = [1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0, 64.0];

pub struct Metrics {
    pub registry: Registry,
    pub request_duration: HistogramVec,
    pub queue_duration: HistogramVec,
    pub preprocess_duration: HistogramVec,
    pub inference_duration: HistogramVec,
    pub batch_size: HistogramVec,
    pub requests_total: IntCounterVec,
    pub queue_depth: IntGaugeVec,
    pub inflight: IntGaugeVec,
    pub model_ready: IntGaugeVec,
    pub model_load_duration: GaugeVec,
    pub model_load_failures: IntCounterVec,
    pub build_info: IntGaugeVec,
    pub layer_kernel_info: IntGaugeVec,
    pub nv_success: IntCounterVec,
    pub nv_failure: IntCounterVec,
    pub nv_count: IntCounterVec,
    pub nv_exec_count: IntCounterVec,
    pub nv_request_us: CounterVec,
    pub nv_queue_us: CounterVec,
    pub nv_input_us: CounterVec,
    pub nv_infer_us: CounterVec,
    pub nv_output_us: CounterVec,
    pub open_connections: IntGauge,
    pub connections_refused: IntCounter,
    pub connections_closed: IntCounterVec,
    /// Task-API answers whose top score was below the model's `threshold`.
    pub not_understood: IntCounterVec,
}

fn hist(reg: &Registry, name: &str, help: &str, buckets: &[f64]) -> HistogramVec {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        &["model", "version"],
    )
    .expect("valid histogram");
    reg.register(Box::new(h.clone())).expect("unique metric");
    h
}

fn int_counter(reg: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter");
    reg.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn counter(reg: &Registry, name: &str, help: &str) -> CounterVec {
    let c = CounterVec::new(Opts::new(name, help), &["model", "version"]).expect("valid counter");
    reg.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn int_gauge(reg: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge");
    reg.register(Box::new(g.clone())).expect("unique metric");
    g
}

impl Metrics {
    pub fn new(kernel_isa: &str) -> Metrics {
        let registry = Registry::new();
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("process collector");
        let r = &registry;
        let mv = &["model", "version"][..];
        let m = Metrics {
            request_duration: hist(
                r,
                "shiftserve_request_duration_seconds",
                "End-to-end duration of accepted inference requests",
                &LATENCY_BUCKETS,
            ),
            queue_duration: hist(
                r,
                "shiftserve_queue_duration_seconds",
                "Time a request waited in the model queue",
                &LATENCY_BUCKETS,
            ),
            preprocess_duration: hist(
                r,
                "shiftserve_preprocess_duration_seconds",
                "Decoding and feature extraction time per request",
                &LATENCY_BUCKETS,
            ),
            inference_duration: hist(
                r,
                "shiftserve_inference_duration_seconds",
                "Duration of one batch execution",
                &LATENCY_BUCKETS,
            ),
            batch_size: hist(
                r,
                "shiftserve_batch_size",
                "Sizes of executed batches",
                &BATCH_BUCKETS,
            ),
            requests_total: int_counter(
                r,
                "shiftserve_requests_total",
                "Inference requests by outcome and reason",
                &["model", "version", "outcome", "reason"],
            ),
            queue_depth: int_gauge(
                r,
                "shiftserve_queue_depth",
                "Requests waiting in the model queue",
                &["model"],
            ),
            inflight: int_gauge(
                r,
                "shiftserve_inflight_requests",
                "Inference requests being handled for the model",
                &["model"],
            ),
            model_ready: int_gauge(
                r,
                "shiftserve_model_ready",
                "1 if the model version is ready",
                mv,
            ),
            model_load_duration: {
                let g = GaugeVec::new(
                    Opts::new(
                        "shiftserve_model_load_duration_seconds",
                        "Time the last load (open, plan, warmup) of the version took",
                    ),
                    mv,
                )
                .expect("valid gauge");
                r.register(Box::new(g.clone())).expect("unique metric");
                g
            },
            model_load_failures: int_counter(
                r,
                "shiftserve_model_load_failures_total",
                "Failed model loads",
                &["model"],
            ),
            not_understood: int_counter(
                r,
                "shiftserve_not_understood_total",
                "Task-API answers whose top score was below the model's threshold",
                &["model", "version"],
            ),
            build_info: int_gauge(
                r,
                "shiftserve_build_info",
                "Build information",
                &["version", "kernel_isa"],
            ),
            layer_kernel_info: int_gauge(
                r,
                "shiftserve_layer_kernel_info",
                "1 for the kernel that runs each layer of a loaded version",
                &["model", "version", "node", "kernel"],
            ),
            nv_success: int_counter(
                r,
                "nv_inference_request_success",
                "Successful inference requests",
                mv,
            ),
            nv_failure: int_counter(
                r,
                "nv_inference_request_failure",
                "Failed inference requests",
                mv,
            ),
            nv_count: int_counter(
                r,
                "nv_inference_count",
                "Inferences performed (samples)",
                mv,
            ),
            nv_exec_count: int_counter(r, "nv_inference_exec_count", "Batch executions", mv),
            nv_request_us: counter(
                r,
                "nv_inference_request_duration_us",
                "Cumulative end-to-end request duration (us)",
            ),
            nv_queue_us: counter(
                r,
                "nv_inference_queue_duration_us",
                "Cumulative queue duration (us)",
            ),
            nv_input_us: counter(
                r,
                "nv_inference_compute_input_duration_us",
                "Cumulative input processing duration (us)",
            ),
            nv_infer_us: counter(
                r,
                "nv_inference_compute_infer_duration_us",
                "Cumulative model execution duration (us)",
            ),
            nv_output_us: counter(
                r,
                "nv_inference_compute_output_duration_us",
                "Cumulative output processing duration (us)",
            ),
            open_connections: {
                let g = IntGauge::new(
                    "shiftserve_open_connections",
                    "Open HTTP connections",
                )
                .expect("valid gauge");
                r.register(Box::new(g.clone())).expect("unique metric");
                g
            },
            connections_refused: {
                let c = IntCounter::new(
                    "shiftserve_connections_refused_total",
                    "Connections refused (503, closed) because --max-connections were open",
                )
                .expect("valid counter");
                r.register(Box::new(c.clone())).expect("unique metric");
                c
            },
            connections_closed: int_counter(
                r,
                "shiftserve_connections_closed_total",
                "Connections closed by the server for taking too long (reason: header_timeout, idle_timeout)",
                &["reason"],
            ),
            registry,
        };
        for why in ["header_timeout", "idle_timeout"] {
            let _ = m.connections_closed.with_label_values(&[why]);
        }
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), kernel_isa])
            .set(1);
        m
    }

    /// Creates every labelled series of a freshly loaded version so dashboards see zeros.
    pub fn init_version(&self, model: &str, version: &str) {
        let l = [model, version];
        for h in [
            &self.request_duration,
            &self.queue_duration,
            &self.preprocess_duration,
            &self.inference_duration,
            &self.batch_size,
        ] {
            let _ = h.with_label_values(&l);
        }
        for c in [
            &self.nv_success,
            &self.nv_failure,
            &self.nv_count,
            &self.nv_exec_count,
            &self.not_understood,
        ] {
            let _ = c.with_label_values(&l);
        }
        for c in [
            &self.nv_request_us,
            &self.nv_queue_us,
            &self.nv_input_us,
            &self.nv_infer_us,
            &self.nv_output_us,
        ] {
            let _ = c.with_label_values(&l);
        }
        let _ = self.requests_total.with_label_values(&[
            model,
            version,
            "success",
            Reason::Ok.as_str(),
        ]);
        let _ = self.queue_depth.with_label_values(&[model]);
        let _ = self.inflight.with_label_values(&[model]);
        let _ = self.model_load_failures.with_label_values(&[model]);
    }

    pub fn record_outcome(&self, model: &str, version: &str, reason: Reason, total: Duration) {
        let outcome = if reason == Reason::Ok {
            "success"
        } else {
            "error"
        };
        self.requests_total
            .with_label_values(&[model, version, outcome, reason.as_str()])
            .inc();
        let l = [model, version];
        if reason == Reason::Ok {
            self.nv_success.with_label_values(&l).inc();
            self.request_duration
                .with_label_values(&l)
                .observe(total.as_secs_f64());
        } else {
            self.nv_failure.with_label_values(&l).inc();
        }
        self.nv_request_us
            .with_label_values(&l)
            .inc_by(total.as_secs_f64() * 1e6);
    }

    pub fn encode(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding");
        String::from_utf8(buf).expect("prometheus text is utf-8")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_name_is_exported() {
        let m = Metrics::new("scalar");
        m.init_version("m", "1");
        m.model_ready.with_label_values(&["m", "1"]).set(1);
        m.model_load_duration
            .with_label_values(&["m", "1"])
            .set(0.5);
        m.record_outcome("m", "1", Reason::Ok, Duration::from_millis(3));
        let text = m.encode();
        for name in [
            "shiftserve_request_duration_seconds_bucket",
            "shiftserve_queue_duration_seconds_bucket",
            "shiftserve_preprocess_duration_seconds_bucket",
            "shiftserve_inference_duration_seconds_bucket",
            "shiftserve_batch_size_bucket",
            "shiftserve_requests_total",
            "shiftserve_queue_depth",
            "shiftserve_inflight_requests",
            "shiftserve_model_ready",
            "shiftserve_model_load_duration_seconds",
            "shiftserve_model_load_failures_total",
            "shiftserve_not_understood_total",
            "shiftserve_build_info",
            "nv_inference_request_success",
            "nv_inference_request_failure",
            "nv_inference_count",
            "nv_inference_exec_count",
            "nv_inference_request_duration_us",
            "nv_inference_queue_duration_us",
            "nv_inference_compute_input_duration_us",
            "nv_inference_compute_infer_duration_us",
            "nv_inference_compute_output_duration_us",
            "shiftserve_open_connections",
            "shiftserve_connections_refused_total",
            "shiftserve_connections_closed_total",
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
        ] {
            assert!(text.contains(name), "missing {name}");
        }
        assert!(text.contains(r#"le="0.0005""#));
        assert!(text.contains(
            r#"shiftserve_requests_total{model="m",outcome="success",reason="ok",version="1"} 1"#
        ));
    }
}
