#!/usr/bin/env python3
"""Validate deploy/kserve/*.yaml against KServe's own CRD schemas, then cross-check them.

    kserve_validate.py DEPLOY_KSERVE_DIR SCHEMA_DIR [--emit-cases OUT.json]

Schema validation does what the Kubernetes API server does with a CustomResource, offline:
  * the CRD's openAPIV3Schema (kserve-crds/*.json.gz, extracted from the KServe repository; see
    kserve-crds/README.md) with python-jsonschema;
  * strict fields, like `kubectl apply` (field validation Strict): an object schema that lists
    `properties` and neither `additionalProperties` nor `x-kubernetes-preserve-unknown-fields`
    accepts no other key (the API server would prune or reject them);
  * `x-kubernetes-list-type: map` (unique key tuples, e.g. two env entries with one name) and
    `set` (unique items);
  * ObjectMeta: metadata.name a DNS-1123 subdomain, labels/annotations string maps.
Each check is first shown to reject a broken variant (self-test), so a validator that accepts
everything fails here.

Cross-checks: every InferenceService names a runtime defined here that supports its model format
and protocol; the runtime's ports match its --http-port / --grpc-port arguments, probes and the
Prometheus annotation point at the HTTP port; image and user match the Kubernetes Deployment and
the Dockerfile; the repository path is an env variable, not an argument.

--emit-cases writes, per InferenceService, the container the KServe controller would build
(runtime args + InferenceService args, env merged by name, uid/gid) for kserve.sh to run.
"""
import copy
import gzip
import json
import re
import sys
from pathlib import Path

import jsonschema
import yaml

DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
KINDS = {
    ("serving.kserve.io/v1alpha1", "ClusterServingRuntime"): "clusterservingruntimes.json.gz",
    ("serving.kserve.io/v1alpha1", "ServingRuntime"): "servingruntimes.json.gz",
    ("serving.kserve.io/v1beta1", "InferenceService"): "inferenceservices.json.gz",
}


def strict(schema):
    """A copy of a structural schema in which object schemas reject unknown fields."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def list_type(validator, value, instance, schema):
    if not validator.is_type(instance, "array"):
        return
    if value == "set":
        seen = []
        for item in instance:
            if item in seen:
                yield jsonschema.ValidationError(f"duplicate entry {item!r} in a list of type set")
            seen.append(item)
    elif value == "map":
        keys = schema.get("x-kubernetes-list-map-keys", [])
        seen = set()
        for item in instance:
            if not isinstance(item, dict):
                continue
            key = tuple(json.dumps(item.get(k), sort_keys=True) for k in keys)
            if key in seen:
                yield jsonschema.ValidationError(
                    f"duplicate entry for key {({k: item.get(k) for k in keys})} in a list of type map")
            seen.add(key)


Validator = jsonschema.validators.extend(jsonschema.Draft7Validator, {"x-kubernetes-list-type": list_type})


def load_schemas(schema_dir):
    validators = {}
    for (api, kind), name in KINDS.items():
        data = json.load(gzip.open(Path(schema_dir) / name))
        if f"{data['group']}/{data['version']}" != api or data["kind"] != kind:
            sys.exit(f"{name}: holds {data['group']}/{data['version']} {data['kind']}, expected {api} {kind}")
        schema = strict(data["openAPIV3Schema"])
        Validator.check_schema(schema)
        validators[(api, kind)] = Validator(schema)
    return validators


def validate(doc, validators):
    """Error messages for one object (empty when valid)."""
    errors = []
    key = (doc.get("apiVersion"), doc.get("kind"))
    if key not in validators:
        return [f"unknown apiVersion/kind {key[0]} {key[1]} (expected one of {sorted(validators)})"]
    meta = doc.get("metadata")
    if not isinstance(meta, dict):
        errors.append("metadata: missing")
    else:
        name = meta.get("name")
        if not isinstance(name, str) or len(name) > 253 or not DNS1123_SUBDOMAIN.match(name):
            errors.append(f"metadata.name: {name!r} is not a DNS-1123 subdomain")
        for field in ("labels", "annotations"):
            m = meta.get(field, {})
            if not isinstance(m, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in m.items()):
                errors.append(f"metadata.{field}: must map strings to strings")
    for err in sorted(validators[key].iter_errors(doc), key=lambda e: list(e.absolute_path)):
        path = ".".join(str(p) for p in err.absolute_path) or "(root)"
        errors.append(f"{path}: {err.message}")
    return errors


def self_test(docs, validators):
    """The validator must reject broken variants of the real manifests."""
    rt = next(d for d in docs if d["kind"].endswith("ServingRuntime"))
    isvc = next(d for d in docs if d["kind"] == "InferenceService")
    broken = []
    b = copy.deepcopy(isvc)
    b["spec"]["predictor"]["model"]["modelFormatt"] = b["spec"]["predictor"]["model"].pop("modelFormat")
    broken.append(("a misspelt InferenceService field", b, "'modelFormatt' was unexpected"))
    b = copy.deepcopy(isvc)
    b["spec"]["predictor"]["scaleMetric"] = "queue"
    broken.append(("a scaleMetric outside the enum", b, "scaleMetric: 'queue' is not one of"))
    b = copy.deepcopy(rt)
    b["spec"]["containers"][0]["ports"][0]["containerPort"] = "8080"
    broken.append(("a containerPort given as a string", b, "containerPort: '8080' is not of type 'integer'"))
    b = copy.deepcopy(rt)
    b["spec"]["containers"][0]["ports"].append(dict(b["spec"]["containers"][0]["ports"][0], name="again"))
    broken.append(("two ports with the same containerPort/protocol (list-map keys)", b, "ports: duplicate entry"))
    b = copy.deepcopy(rt)
    del b["spec"]["containers"][0]["name"]
    broken.append(("a container without a name", b, "'name' is a required property"))
    b = copy.deepcopy(rt)
    b["spec"]["containers"][0]["resources"]["limits"]["cpu"] = "four"
    broken.append(("a CPU limit that is not a quantity", b, "limits.cpu: 'four' does not match"))
    b = copy.deepcopy(rt)
    b["metadata"]["name"] = "Shift_Serve"
    broken.append(("an invalid object name", b, "is not a DNS-1123 subdomain"))
    for what, doc, expected in broken:
        errors = validate(doc, validators)
        if not any(expected in e for e in errors):
            sys.exit(f"FAIL self-test: {what} was not rejected as expected ({expected!r}): {errors}")
        print(f"  self-test: rejects {what}")


def arg_value(args, flag):
    for i, a in enumerate(args):
        if a == flag:
            return args[i + 1] if i + 1 < len(args) else None
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


def merge_env(base, override):
    out = {e["name"]: e for e in base}
    for e in override:
        out[e["name"]] = e
    return list(out.values())


def cross_check(docs, root):
    problems = []
    runtimes = {d["metadata"]["name"]: d for d in docs if d["kind"].endswith("ServingRuntime")}
    services = [d for d in docs if d["kind"] == "InferenceService"]
    if not runtimes or not services:
        problems.append("deploy/kserve needs at least one ServingRuntime/ClusterServingRuntime and one "
                        "InferenceService")
    deployment = yaml.safe_load(open(root / "deploy/k8s/deployment.yaml"))
    (k8s_c,) = deployment["spec"]["template"]["spec"]["containers"]
    dockerfile = (root / "deploy/Dockerfile").read_text()
    user = re.findall(r"^USER\s+(\d+)(?::(\d+))?", dockerfile, re.M)[-1]
    bundled = re.findall(r"^COPY\s.*models/repository\s+(\S+)", dockerfile, re.M)
    cases = []
    for name, rt in runtimes.items():
        where = f"{rt['kind']} {name}"
        containers = rt["spec"]["containers"]
        main = [c for c in containers if c["name"] == "kserve-container"]
        if len(main) != 1:
            problems.append(f"{where}: needs exactly one container named kserve-container "
                            "(KServe merges the predictor into it)")
            continue
        (c,) = main
        args = c.get("args", [])
        if c.get("image") != k8s_c.get("image"):
            problems.append(f"{where}: image {c.get('image')} differs from deploy/k8s/deployment.yaml "
                            f"({k8s_c.get('image')})")
        if arg_value(args, "--model-repository") is not None:
            problems.append(f"{where}: --model-repository in args (an InferenceService could not override it: "
                            "KServe appends args); use SHIFTSERVE_MODEL_REPOSITORY")
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        if env.get("SHIFTSERVE_MODEL_REPOSITORY") != "/mnt/models":
            problems.append(f"{where}: SHIFTSERVE_MODEL_REPOSITORY should default to /mnt/models "
                            "(the storage initializer's target)")
        ports = c.get("ports", [])
        by_name = {p.get("name"): p["containerPort"] for p in ports}
        http = arg_value(args, "--http-port")
        grpc = arg_value(args, "--grpc-port")
        if not ports or http is None or ports[0]["containerPort"] != int(http):
            problems.append(f"{where}: the first port (KServe's service port 80) must be --http-port ({http})")
        grpc_ports = [p for p in ports if "grpc" in p.get("name", "") or "h2c" in p.get("name", "")]
        if grpc is None:
            # REST only: no gRPC port, and KServe must not be told the runtime speaks grpc-v2.
            if grpc_ports:
                problems.append(f"{where}: a grpc port is declared but no --grpc-port is passed")
            if set(rt["spec"].get("protocolVersions", [])) != {"v2"}:
                problems.append(f"{where}: without --grpc-port, protocolVersions should be v2 only")
        else:
            if len(grpc_ports) != 1 or grpc_ports[0]["containerPort"] != int(grpc):
                problems.append(f"{where}: one port named grpc must match --grpc-port ({grpc})")
            if set(rt["spec"].get("protocolVersions", [])) != {"v2", "grpc-v2"}:
                problems.append(f"{where}: protocolVersions should be v2 and grpc-v2")
        if rt["spec"].get("annotations", {}).get("prometheus.kserve.io/port") != http:
            problems.append(f"{where}: prometheus.kserve.io/port should be the HTTP port {http}")
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            port = c.get(probe, {}).get("httpGet", {}).get("port")
            if port not in (int(http or 0), *[n for n, v in by_name.items() if str(v) == http]):
                problems.append(f"{where}: {probe} port {port} is not the HTTP port {http}")
        paths = {p: c.get(p, {}).get("httpGet", {}).get("path") for p in ("livenessProbe", "readinessProbe")}
        if paths != {"livenessProbe": "/v2/health/live", "readinessProbe": "/v2/health/ready"}:
            problems.append(f"{where}: probes should be /v2/health/live and /v2/health/ready, got {paths}")
        sc = c.get("securityContext", {})
        if (str(sc.get("runAsUser")), str(sc.get("runAsGroup"))) != (user[0], user[1] or user[0]):
            problems.append(f"{where}: runAsUser/runAsGroup {sc.get('runAsUser')}/{sc.get('runAsGroup')} "
                            f"differ from the Dockerfile's USER {user[0]}:{user[1]}")
        mounts = {m["name"] for m in c.get("volumeMounts", [])}
        vols = {v["name"] for v in rt["spec"].get("volumes", [])}
        if mounts - vols:
            problems.append(f"{where}: volumeMounts without a volume: {sorted(mounts - vols)}")
    for isvc in services:
        where = f"InferenceService {isvc['metadata']['name']}"
        model = isvc["spec"]["predictor"].get("model", {})
        rt = runtimes.get(model.get("runtime"))
        if rt is None:
            problems.append(f"{where}: runtime {model.get('runtime')!r} is not defined in deploy/kserve")
            continue
        fmt = model.get("modelFormat", {})
        if not any(f["name"] == fmt.get("name") and f.get("version") in (None, fmt.get("version"))
                   for f in rt["spec"].get("supportedModelFormats", [])):
            problems.append(f"{where}: model format {fmt} not supported by runtime {model['runtime']}")
        if model.get("protocolVersion", "v1") not in rt["spec"].get("protocolVersions", []):
            problems.append(f"{where}: protocolVersion {model.get('protocolVersion')} not in the runtime's "
                            "protocolVersions")
        (c,) = [c for c in rt["spec"]["containers"] if c["name"] == "kserve-container"]
        env = {e["name"]: e.get("value") for e in merge_env(c.get("env", []), model.get("env", []))}
        repo = env.get("SHIFTSERVE_MODEL_REPOSITORY")
        if "storageUri" in model:
            if repo != "/mnt/models":
                problems.append(f"{where}: has a storageUri but serves {repo}, not /mnt/models")
        elif repo not in bundled:
            problems.append(f"{where}: no storageUri, so it must serve the image's bundled repository "
                            f"{bundled}, not {repo}")
        sc = c.get("securityContext", {})
        cases.append({
            "name": f"{where} on {rt['kind']} {model['runtime']}",
            "argv": c.get("args", []) + model.get("args", []),
            "env": env,
            "uid": sc.get("runAsUser", 0), "gid": sc.get("runAsGroup", 0),
            "repository": repo,
            "http_port": arg_value(c.get("args", []), "--http-port"),
            "probe_paths": [c[p]["httpGet"]["path"]
                            for p in ("startupProbe", "livenessProbe", "readinessProbe") if p in c],
            "exit_timeout": int(arg_value(c.get("args", []), "--exit-timeout-secs") or 30),
        })
    return problems, cases


def main():
    args = sys.argv[1:]
    emit = None
    if "--emit-cases" in args:
        i = args.index("--emit-cases")
        emit = args[i + 1]
        del args[i:i + 2]
    if len(args) != 2:
        sys.exit(__doc__)
    kserve_dir, schema_dir = Path(args[0]), Path(args[1])
    root = kserve_dir.resolve().parents[1]
    validators = load_schemas(schema_dir)
    docs, failed = [], False
    for f in sorted(kserve_dir.glob("*.yaml")):
        for n, doc in enumerate(yaml.safe_load_all(f.read_text())):
            if doc is None:
                continue
            errors = validate(doc, validators)
            label = f"{f.name}#{n} {doc.get('kind')} {doc.get('metadata', {}).get('name')}"
            if errors:
                failed = True
                print(f"  INVALID {label}")
                for e in errors:
                    print(f"    {e}")
            else:
                print(f"  valid   {label}")
            docs.append(doc)
    if failed:
        sys.exit("FAIL: manifests do not validate against the KServe CRD schemas")
    self_test(docs, validators)
    problems, cases = cross_check(docs, root)
    for p in problems:
        print(f"  INCONSISTENT {p}")
    if problems:
        sys.exit("FAIL: deploy/kserve is inconsistent")
    print(f"  cross-checks: {len(cases)} InferenceService(s) against their runtime, the Deployment and the Dockerfile")
    if emit:
        json.dump(cases, open(emit, "w"), indent=1)


if __name__ == "__main__":
    main()
