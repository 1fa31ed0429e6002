#!/usr/bin/env python3
"""Cross-checks the Kubernetes manifests in deploy/k8s beyond what a schema can see.

- kustomization.yaml lists every manifest of the app (the adapter config stays separate);
- Deployment selector matches its pod template, Service and PodDisruptionBudget select those pods,
  the Service's targetPort is a named container port;
- probes: liveness on /v2/health/live, readiness on /v2/health/ready, on the container's port;
- shutdown: terminationGracePeriodSeconds > preStop sleep + --exit-timeout-secs;
- every subPath mounted from the ConfigMap is a key of it; every key is a TOML model config whose
  keys are the documented ones; models named there exist in models/repository when it exists;
- the HPA targets the Deployment, every Pods metric it uses is one the prometheus-adapter rule
  exposes, and each per-model selector names a model of the ConfigMap;
- the adapter rule's series is the documented per-model queue-depth gauge.
"""
import re
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
REPO = ROOT / "models" / "repository"
CONFIG_KEYS = {"description", "max_batch_size", "preferred_batch_sizes", "max_queue_delay_us", "queue_capacity",
               "threads", "instances", "timeout_ms", "version_policy", "warmup"}
WARMUP_KEYS = {"batch_sizes", "iterations"}

problems = []


def need(cond, msg):
    if not cond:
        problems.append(msg)
    return cond


def load_all():
    objs = {}
    for f in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(f.read_text()):
            if doc:
                objs.setdefault(doc["kind"], []).append((f.name, doc))
    return objs


def selects(selector, labels):
    return all(labels.get(k) == v for k, v in (selector or {}).items())


def main():
    objs = load_all()
    one = {k: v[0][1] for k, v in objs.items() if k != "ConfigMap"}
    cms = {d["metadata"]["name"]: (f, d) for f, d in objs.get("ConfigMap", [])}
    for kind in ("Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Kustomization"):
        need(kind in one, f"no {kind} manifest")
    if problems:
        return report()

    kust = one["Kustomization"]
    files = {f for f in (p.name for p in K8S.glob("*.yaml"))} - {"kustomization.yaml"}
    listed = set(kust.get("resources", []))
    adapter_files = {f for f, d in objs["ConfigMap"] if d["metadata"].get("namespace") == "monitoring"}
    need(listed == files - adapter_files, f"kustomization resources {sorted(listed)} != manifests {sorted(files - adapter_files)}")

    dep = one["Deployment"]
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    need(selects(dep["spec"]["selector"]["matchLabels"], pod_labels), "Deployment selector does not match its pods")
    svc = one["Service"]
    need(selects(svc["spec"]["selector"], pod_labels), "Service selector does not match the pods")
    pdb = one["PodDisruptionBudget"]
    need(selects(pdb["spec"]["selector"]["matchLabels"], pod_labels), "PDB selector does not match the pods")
    need(pdb["spec"].get("minAvailable", 0) < dep["spec"].get("replicas", 1) or "maxUnavailable" in pdb["spec"],
         "PDB minAvailable must be below the replica count, or no node could ever be drained")

    spec = dep["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    for sp in svc["spec"]["ports"]:
        need(sp["targetPort"] in ports or sp["targetPort"] in ports.values(),
             f"Service targetPort {sp['targetPort']} is not a container port {ports}")
    probes = {
        "livenessProbe": "/v2/health/live",
        "readinessProbe": "/v2/health/ready",
    }
    for probe, path in probes.items():
        p = c.get(probe, {}).get("httpGet", {})
        need(p.get("path") == path, f"{probe} must GET {path}, has {p.get('path')}")
        need(p.get("port") in ports or p.get("port") in ports.values(), f"{probe} port {p.get('port')} is not a container port")
    sp_ = c.get("startupProbe", {}).get("httpGet", {})
    need(sp_.get("path") in ("/v2/health/live", "/v2/health/ready"), "startupProbe must use an OIP health route")

    args = c.get("args", [])
    need("--exit-timeout-secs" in args, "container args lack --exit-timeout-secs")
    # gRPC: the port the server listens on is the container port `grpc`, and the Service has it.
    if need("--grpc-port" in args, "container args lack --grpc-port"):
        need(str(ports.get("grpc")) == args[args.index("--grpc-port") + 1],
             f"container port grpc {ports.get('grpc')} != --grpc-port {args[args.index('--grpc-port') + 1]}")
        need(any(sp["targetPort"] in ("grpc", ports.get("grpc")) for sp in svc["spec"]["ports"]),
             "the Service does not expose the grpc port")
    exit_timeout = int(args[args.index("--exit-timeout-secs") + 1]) if "--exit-timeout-secs" in args else 0
    pre = c.get("lifecycle", {}).get("preStop", {})
    sleep = 0
    if "exec" in pre:
        cmd = pre["exec"]["command"]
        m = re.fullmatch(r"(\d+)", cmd[-1]) if cmd and cmd[0].endswith("sleep") else None
        sleep = int(m.group(1)) if m else 0
    elif "sleep" in pre:
        sleep = pre["sleep"]["seconds"]
    need(sleep > 0, "preStop must pause so endpoints drop the pod before SIGTERM")
    grace = spec.get("terminationGracePeriodSeconds", 30)
    need(grace > sleep + exit_timeout,
         f"terminationGracePeriodSeconds {grace} must exceed preStop {sleep} s + --exit-timeout-secs {exit_timeout} s")
    res = c.get("resources", {})
    need(res.get("requests", {}).get("cpu") and res.get("limits", {}).get("memory"), "container needs cpu requests and memory limits")

    # ConfigMap <-> mounts
    vols = {v["name"]: v for v in spec.get("volumes", [])}
    models = []
    for m in c.get("volumeMounts", []):
        v = vols.get(m["name"])
        need(v is not None, f"volumeMount {m['name']} has no volume")
        if v and "configMap" in v:
            cm_name = v["configMap"]["name"]
            need(cm_name in cms, f"volume {m['name']} names ConfigMap {cm_name}, not in deploy/k8s")
            if cm_name in cms and "subPath" in m:
                need(m["subPath"] in cms[cm_name][1]["data"], f"subPath {m['subPath']} is not a key of {cm_name}")
                mm = re.fullmatch(r"/opt/shiftserve/models/([^/]+)/config.toml", m["mountPath"])
                need(mm is not None, f"{m['mountPath']} is not a model config path in the image's repository")
                if mm:
                    models.append(mm.group(1))
                    need(m["subPath"] == f"{mm.group(1)}.config.toml", f"{m['subPath']} mounted as {mm.group(1)}'s config")
    model_cm = cms.get("shiftserve-models", (None, {"data": {}}))[1]
    for key, text in model_cm["data"].items():
        try:
            cfg = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            problems.append(f"ConfigMap key {key} is not valid TOML: {e}")
            continue
        unknown = set(cfg) - CONFIG_KEYS
        need(not unknown, f"{key}: unknown config keys {sorted(unknown)}")
        need(not (set(cfg.get("warmup", {})) - WARMUP_KEYS), f"{key}: unknown warmup keys")
        mb = cfg.get("max_batch_size", 8)
        need(all(b <= mb for b in cfg.get("preferred_batch_sizes", [])), f"{key}: a preferred batch size exceeds max_batch_size")
        need(all(b <= mb for b in cfg.get("warmup", {}).get("batch_sizes", [])), f"{key}: a warm-up batch exceeds max_batch_size")
        need(key.removesuffix(".config.toml") in models, f"ConfigMap key {key} is mounted nowhere")
    if REPO.is_dir():
        bundled = sorted(p.name for p in REPO.iterdir() if (p / "config.toml").is_file())
        for m in models:
            need(m in bundled, f"ConfigMap configures model {m}, not in models/repository ({bundled})")
        for m in bundled:
            if m not in models:
                print(f"  WARNING: bundled model {m} has no entry in the ConfigMap (it serves with the "
                      "image's config.toml; run deploy/k8s/sync_models.py)")
    else:
        print(f"  note: {REPO.relative_to(ROOT)} does not exist yet; model names not compared with it")

    # HPA <-> adapter
    hpa = one["HorizontalPodAutoscaler"]
    ref = hpa["spec"]["scaleTargetRef"]
    need(ref["kind"] == "Deployment" and ref["name"] == dep["metadata"]["name"], "HPA does not target the Deployment")
    need(hpa["spec"]["minReplicas"] >= 2, "HPA minReplicas below 2 leaves no replica during a rollout or drain")
    adapter = next((d for f, d in objs["ConfigMap"] if d["metadata"]["name"].startswith("prometheus-adapter")), None)
    need(adapter is not None, "no prometheus-adapter ConfigMap")
    exposed = set()
    if adapter:
        rules = yaml.safe_load(adapter["data"]["config.yaml"])["rules"]
        for r in rules:
            series = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)", r["seriesQuery"]).group(1)
            need(series == "shiftserve_queue_depth", f"adapter rule series {series} is not shiftserve_queue_depth")
            need({"namespace", "pod"} <= set(r["resources"]["overrides"]), "adapter rule must map namespace and pod")
            exposed.add(r["name"].get("as", series))
            need("<<.LabelMatchers>>" in r["metricsQuery"] and "<<.GroupBy>>" in r["metricsQuery"],
                 "adapter metricsQuery must keep <<.LabelMatchers>> and <<.GroupBy>>")
    kinds = []
    for m in hpa["spec"]["metrics"]:
        kinds.append(m["type"])
        if m["type"] == "Pods":
            name = m["pods"]["metric"]["name"]
            need(name in exposed, f"HPA Pods metric {name} is not exposed by the adapter rules {exposed}")
            sel = m["pods"]["metric"].get("selector", {}).get("matchLabels", {})
            if "model" in sel:
                need(sel["model"] in models, f"HPA selects model {sel['model']}, not configured in the ConfigMap")
    need("Resource" in kinds and "Pods" in kinds, "HPA must scale on CPU and on queue depth")

    print(f"  Deployment {dep['metadata']['name']}: probes /v2/health/live + /v2/health/ready on port {list(ports)}, "
          f"grace {grace} s > preStop {sleep} s + drain {exit_timeout} s")
    print(f"  ConfigMap models: {', '.join(models)}; HPA metrics: {', '.join(kinds)} "
          f"(Pods metrics via adapter: {', '.join(sorted(exposed))})")
    return report()


def report():
    if problems:
        print("k8s cross-check problems:", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        return 1
    print("  cross-references consistent")
    return 0


if __name__ == "__main__":
    sys.exit(main())
