#!/usr/bin/env python3
"""Writes deploy/grafana/dashboards/shiftserve.json, the provisioned Grafana dashboard.

The JSON is generated so the panels stay consistent (same datasource, legend, units, model
filter); the generated file is committed and scripts/deploy-checks/dashboard.py fails when it
drifts from this generator or names a metric the server does not export.

    python3 deploy/grafana/make_dashboard.py            # rewrite the JSON
    python3 deploy/grafana/make_dashboard.py --check    # exit 1 if the committed JSON differs
"""
import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent / "dashboards" / "shiftserve.json"
DS = {"type": "prometheus", "uid": "${datasource}"}
M = 'model=~"$model"'
RI = "$__rate_interval"


class Layout:
    """Places panels on Grafana's 24-column grid, left to right, top to bottom."""

    def __init__(self):
        self.x = 0
        self.y = 0
        self.row_h = 0
        self.next_id = 1

    def pos(self, w, h):
        if self.x + w > 24:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        p = {"x": self.x, "y": self.y, "w": w, "h": h}
        self.x += w
        self.row_h = max(self.row_h, h)
        return p

    def new_row(self):
        if self.x:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0

    def take_id(self):
        i = self.next_id
        self.next_id += 1
        return i


L = Layout()


def target(expr, legend, ref, **extra):
    t = {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": ref, "range": True}
    t.update(extra)
    return t


def timeseries(title, description, targets, unit, w=12, h=8, stack=False, min0=True, decimals=None):
    defaults = {
        "unit": unit,
        "custom": {
            "drawStyle": "line",
            "lineWidth": 1,
            "fillOpacity": 20 if stack else 5,
            "showPoints": "never",
            "spanNulls": False,
            "stacking": {"mode": "normal" if stack else "none", "group": "A"},
        },
    }
    if min0:
        defaults["min"] = 0
    if decimals is not None:
        defaults["decimals"] = decimals
    return {
        "type": "timeseries",
        "id": L.take_id(),
        "title": title,
        "description": description,
        "datasource": DS,
        "gridPos": L.pos(w, h),
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull", "max"]},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "targets": [target(*t) for t in targets],
    }


def stat(title, description, expr, unit, legend="", w=6, h=4, thresholds=None):
    steps = thresholds or [{"color": "green", "value": None}]
    return {
        "type": "stat",
        "id": L.take_id(),
        "title": title,
        "description": description,
        "datasource": DS,
        "gridPos": L.pos(w, h),
        "fieldConfig": {
            "defaults": {"unit": unit, "thresholds": {"mode": "absolute", "steps": steps}},
            "overrides": [],
        },
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "area",
            "textMode": "auto",
        },
        "targets": [target(expr, legend, "A", instant=False)],
    }


def row(title):
    L.new_row()
    p = {
        "type": "row",
        "id": L.take_id(),
        "title": title,
        "collapsed": False,
        "gridPos": {"x": 0, "y": L.y, "w": 24, "h": 1},
        "panels": [],
    }
    L.y += 1
    return p


def quantile(q, metric, by="model"):
    return f"histogram_quantile({q}, sum by ({by}, le) (rate({metric}_bucket{{{M}}}[{RI}])))"


def mean(metric, by="model"):
    return f"sum by ({by}) (rate({metric}_sum{{{M}}}[{RI}])) / sum by ({by}) (rate({metric}_count{{{M}}}[{RI}]))"


def build():
    panels = []
    panels.append(row("Overview"))
    panels.append(stat("Models ready", "Model versions loaded, warmed up and serving (shiftserve_model_ready).",
                       "sum(shiftserve_model_ready)", "none"))
    panels.append(stat("Requests / s", "All models, all outcomes.",
                       f"sum(rate(shiftserve_requests_total[{RI}]))", "reqps"))
    panels.append(stat("Error ratio", "Share of requests answered with an error (any reason), all models.",
                       f"sum(rate(shiftserve_requests_total{{outcome=\"error\"}}[{RI}])) / "
                       f"sum(rate(shiftserve_requests_total[{RI}]))", "percentunit",
                       thresholds=[{"color": "green", "value": None}, {"color": "orange", "value": 0.01},
                                   {"color": "red", "value": 0.05}]))
    panels.append(stat("Kernel ISA", "Instruction set the shift kernels selected at start-up (shiftserve_build_info).",
                       "max by (kernel_isa, version) (shiftserve_build_info)", "none", legend="{{kernel_isa}} (v{{version}})"))

    panels.append(row("Traffic and latency per model"))
    panels.append(timeseries(
        "Request rate by model", "Requests per second per model, every outcome.",
        [(f"sum by (model) (rate(shiftserve_requests_total{{{M}}}[{RI}]))", "{{model}}", "A")], "reqps"))
    panels.append(timeseries(
        "Latency p50 / p95 / p99 by model",
        "End-to-end latency of accepted requests, from shiftserve_request_duration_seconds histograms.",
        [(quantile(0.50, "shiftserve_request_duration_seconds"), "{{model}} p50", "A"),
         (quantile(0.95, "shiftserve_request_duration_seconds"), "{{model}} p95", "B"),
         (quantile(0.99, "shiftserve_request_duration_seconds"), "{{model}} p99", "C")], "s"))
    panels.append(timeseries(
        "Where the time goes: queue vs preprocess vs inference (mean)",
        "Mean time per request waiting in the batcher queue, decoding/feature extraction, and per batch "
        "execution. Queue time growing faster than inference time means the model needs more instances.",
        [(mean("shiftserve_queue_duration_seconds"), "{{model}} queue", "A"),
         (mean("shiftserve_preprocess_duration_seconds"), "{{model}} preprocess", "B"),
         (mean("shiftserve_inference_duration_seconds"), "{{model}} inference (batch)", "C")], "s"))
    panels.append(timeseries(
        "Queue vs inference p95",
        "95th percentiles of queue time and of batch execution time.",
        [(quantile(0.95, "shiftserve_queue_duration_seconds"), "{{model}} queue p95", "A"),
         (quantile(0.95, "shiftserve_inference_duration_seconds"), "{{model}} inference p95", "B")], "s"))

    panels.append(row("Batching and queues"))
    panels.append(timeseries(
        "Batch size (mean and p95)",
        "Executed batch sizes (shiftserve_batch_size histogram). Mean near 1 under load means the "
        "batcher never waits long enough to group requests; see max_queue_delay_us.",
        [(mean("shiftserve_batch_size"), "{{model}} mean", "A"),
         (quantile(0.95, "shiftserve_batch_size"), "{{model}} p95", "B")], "none", decimals=1))
    panels.append(timeseries(
        "Queue depth and in-flight",
        "Requests waiting in each model's queue (the HPA's custom metric) and requests in flight.",
        [(f"sum by (model) (shiftserve_queue_depth{{{M}}})", "{{model}} queued", "A"),
         (f"sum by (model) (shiftserve_inflight_requests{{{M}}})", "{{model}} in flight", "B")], "none"))
    panels.append(timeseries(
        "Errors by reason",
        "Failed requests per second by model and reason (overloaded = 429, timeout = 504, "
        "bad_input = 400, unsupported_media = 415, too_large = 413, unavailable = 503).",
        [(f"sum by (model, reason) (rate(shiftserve_requests_total{{outcome=\"error\",{M}}}[{RI}]))",
          "{{model}} {{reason}}", "A")], "reqps", stack=True))
    panels.append(timeseries(
        "Triton-compatible: inferences per execution",
        "nv_inference_count / nv_inference_exec_count: the same batching view through the Triton "
        "counters, so existing Triton dashboards read this server too.",
        [(f"sum by (model) (rate(nv_inference_count{{{M}}}[{RI}])) / "
          f"sum by (model) (rate(nv_inference_exec_count{{{M}}}[{RI}]))", "{{model}}", "A")], "none",
        decimals=2))

    panels.append(row("Process and models"))
    panels.append(timeseries(
        "CPU (cores)", "process_cpu_seconds_total rate: cores busy in each shiftserve process "
        "(any target that also exports shiftserve_build_info, whatever its job name).",
        [(f"rate(process_cpu_seconds_total[{RI}]) and on (instance) shiftserve_build_info", "{{instance}}", "A")], "none",
        decimals=2, w=8))
    panels.append(timeseries(
        "Resident memory", "process_resident_memory_bytes of each shiftserve process.",
        [("process_resident_memory_bytes and on (instance) shiftserve_build_info", "{{instance}}", "A")], "bytes", w=8))
    panels.append(timeseries(
        "Model load time and failures",
        "Load + warm-up time of each loaded version, and load failures over the last hour "
        "(a failed load keeps the previous version serving).",
        [(f"shiftserve_model_load_duration_seconds{{{M}}}", "{{model}} v{{version}} load", "A"),
         (f"increase(shiftserve_model_load_failures_total{{{M}}}[1h])", "{{model}} failures (1h)", "B")],
        "s", w=8))

    return {
        "uid": "shiftserve-overview",
        "title": "shiftserve",
        "description": "Per-model traffic, latency percentiles, batching, queues, errors and CPU of shiftserve.",
        "tags": ["shiftserve", "inference"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "refresh": "10s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-30m", "to": "now"},
        "timepicker": {"refresh_intervals": ["5s", "10s", "30s", "1m", "5m"]},
        "annotations": {"list": []},
        "links": [],
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {"selected": False, "text": "Prometheus", "value": "prometheus"},
                    "hide": 0,
                    "refresh": 1,
                    "options": [],
                },
                {
                    "name": "model",
                    "label": "Model",
                    "type": "query",
                    "datasource": DS,
                    "definition": "label_values(shiftserve_model_ready, model)",
                    "query": {"query": "label_values(shiftserve_model_ready, model)", "refId": "models"},
                    "includeAll": True,
                    "multi": True,
                    "allValue": ".*",
                    "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
                    "refresh": 2,
                    "sort": 1,
                    "hide": 0,
                    "options": [],
                },
            ]
        },
        "panels": panels,
    }


def render():
    return json.dumps(build(), indent=2, sort_keys=False) + "\n"


def main(argv):
    text = render()
    if "--check" in argv:
        current = OUT.read_text() if OUT.exists() else ""
        if current != text:
            print(f"{OUT} is out of date: run python3 deploy/grafana/make_dashboard.py", file=sys.stderr)
            return 1
        print(f"{OUT} matches its generator")
        return 0
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text)
    print(f"wrote {OUT} ({len(build()['panels'])} panels)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
