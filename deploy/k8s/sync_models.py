#!/usr/bin/env python3
"""Keeps the Kubernetes manifests in step with the bundled model repository.

For every model in models/repository (a directory with config.toml and at least one numeric
version directory) this writes:
  - configmap.yaml: the model's config.toml, verbatim, under key `<model>.config.toml`;
  - deployment.yaml: a subPath mount of that key over /opt/shiftserve/models/<model>/config.toml
    (between the `BEGIN/END generated model mounts` markers);
  - hpa.yaml: a `Pods` metric on shiftserve_queue_depth{model="<model>"} whose target is one full
    batch (the model's max_batch_size) waiting per pod (between the `BEGIN/END generated` markers).

    python3 deploy/k8s/sync_models.py           # rewrite the three files
    python3 deploy/k8s/sync_models.py --check   # CI: exit 1 if a manifest names a model that is
                                                # not bundled (its pods would never be ready);
                                                # other drift is a loud warning (a model added
                                                # or retuned in models/repository still serves
                                                # with the image's config until this is rerun)
    python3 deploy/k8s/sync_models.py --check --strict   # any drift is an error
    python3 deploy/k8s/sync_models.py --repo DIR         # use another repository directory

To change a model's batching or thread budget for Kubernetes, edit its config.toml in
models/repository and run this script; the image and the ConfigMap then agree.
"""
import sys
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
REPO = ROOT / "models" / "repository"
IMAGE_REPO = "/opt/shiftserve/models"

CONFIGMAP_HEAD = """\
# Per-model repository configuration: each bundled model's config.toml (generated from
# models/repository by deploy/k8s/sync_models.py; do not edit by hand). The Deployment mounts each
# key over the config.toml baked into the image. subPath mounts do not follow ConfigMap updates:
# `kubectl rollout restart deployment/shiftserve` after applying a change.
apiVersion: v1
kind: ConfigMap
metadata:
  name: shiftserve-models
  labels:
    app.kubernetes.io/name: shiftserve
    app.kubernetes.io/component: model-repository
"""


def bundled():
    out = []
    if not REPO.is_dir():
        return out
    for d in sorted(REPO.iterdir()):
        cfg = d / "config.toml"
        versions = [v for v in d.iterdir() if v.is_dir() and v.name.isdigit() and int(v.name) > 0] if d.is_dir() else []
        if cfg.is_file() and versions:
            text = cfg.read_text()
            out.append((d.name, text, tomllib.loads(text)))
    return out


def configmap(models):
    if not models:
        return CONFIGMAP_HEAD + "data: {}\n"
    lines = [CONFIGMAP_HEAD + "data:"]
    for name, text, _ in models:
        lines.append(f"  {name}.config.toml: |")
        for ln in text.rstrip("\n").splitlines():
            lines.append(f"    {ln}" if ln.strip() else "")
    return "\n".join(lines) + "\n"


def mounts(models, indent):
    pad = " " * indent
    out = []
    for name, _, _ in models:
        out += [f"{pad}- name: model-config",
                f"{pad}  mountPath: {IMAGE_REPO}/{name}/config.toml",
                f"{pad}  subPath: {name}.config.toml",
                f"{pad}  readOnly: true"]
    return out


def hpa_metrics(models, indent):
    pad = " " * indent
    out = []
    for name, _, cfg in models:
        target = int(cfg.get("max_batch_size", 8))
        out += [f"{pad}- type: Pods",
                f"{pad}  pods:",
                f"{pad}    metric:",
                f"{pad}      name: shiftserve_queue_depth",
                f"{pad}      selector:",
                f"{pad}        matchLabels:",
                f"{pad}          model: {name}",
                f"{pad}    target:",
                f"{pad}      type: AverageValue",
                f'{pad}      averageValue: "{target}"   # one full batch (max_batch_size) queued per pod']
    return out


def replace_block(text, begin, end, new_lines, path):
    lines = text.splitlines()
    try:
        b = next(i for i, ln in enumerate(lines) if ln.strip() == begin)
        e = next(i for i, ln in enumerate(lines) if ln.strip() == end and i > b)
    except StopIteration:
        raise SystemExit(f"{path}: markers `{begin}` / `{end}` not found")
    indent = len(lines[b]) - len(lines[b].lstrip())
    return "\n".join(lines[: b + 1] + new_lines(indent) + lines[e:]) + "\n"


def render():
    models = bundled()
    files = {HERE / "configmap.yaml": configmap(models)}
    dep = HERE / "deployment.yaml"
    files[dep] = replace_block(dep.read_text(), "# BEGIN generated model mounts (sync_models.py)",
                               "# END generated model mounts", lambda i: mounts(models, i), dep)
    hpa = HERE / "hpa.yaml"
    files[hpa] = replace_block(hpa.read_text(), "# BEGIN generated per-model queue depth (sync_models.py)",
                               "# END generated per-model queue depth", lambda i: hpa_metrics(models, i), hpa)
    return models, files


def yaml_keys(path):
    """Model names keyed in the current configmap.yaml (`  <model>.config.toml: |` lines)."""
    names = set()
    for ln in path.read_text().splitlines():
        if ln.startswith("  ") and not ln.startswith("   ") and ln.rstrip().endswith(".config.toml: |"):
            names.add(ln.strip()[: -len(".config.toml: |")])
    return names


def main(argv):
    global REPO
    if "--repo" in argv:  # e.g. a clean export of the committed repository
        REPO = Path(argv[argv.index("--repo") + 1]).resolve()
    models, files = render()
    names = ", ".join(m[0] for m in models) or "none"
    if "--check" in argv:
        stale = [p.name for p, text in files.items() if p.read_text() != text]
        if not stale:
            print(f"  manifests match models/repository ({names})")
            return 0
        bundled_names = {m[0] for m in models}
        current = yaml_keys(HERE / "configmap.yaml")
        missing = sorted(current - bundled_names)
        msg = (f"{', '.join(stale)} out of date with models/repository ({names}); "
               "run python3 deploy/k8s/sync_models.py")
        if missing:
            print(f"ERROR: the manifests configure {', '.join(missing)}, not bundled: pods would never "
                  f"be ready. {msg}", file=sys.stderr)
            return 1
        if "--strict" in argv:
            print(f"ERROR: {msg}", file=sys.stderr)
            return 1
        print(f"  WARNING: {msg} (the image's own config.toml serves meanwhile)")
        return 0
    for p, text in files.items():
        p.write_text(text)
    print(f"synced configmap.yaml, deployment.yaml, hpa.yaml with models/repository ({names})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
