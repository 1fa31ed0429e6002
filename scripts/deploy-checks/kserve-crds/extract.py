#!/usr/bin/env python3
"""Extract the OpenAPI v3 schema of a KServe CustomResourceDefinition into the compact test data
that scripts/deploy-checks/kserve_validate.py validates deploy/kserve/ against.

    python3 extract.py CRD.yaml OUT.json.gz

Keeps the CRD's group, kind and the served+stored version with its `openAPIV3Schema` exactly as
the CRD declares it, minus the `description` strings (documentation only: they are not
validation keywords and make up most of the text). Nothing else is changed. The output is
gzip-compressed JSON with sorted keys and a fixed mtime, so the same CRD gives the same bytes.
"""
import gzip
import hashlib
import json
import sys

import yaml


def strip_descriptions(node):
    if isinstance(node, dict):
        return {k: strip_descriptions(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [strip_descriptions(v) for v in node]
    return node


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    src, dst = sys.argv[1], sys.argv[2]
    raw = open(src, "rb").read()
    crd = yaml.safe_load(raw)
    if crd.get("kind") != "CustomResourceDefinition":
        sys.exit(f"{src}: not a CustomResourceDefinition")
    versions = [v for v in crd["spec"]["versions"] if v.get("served") and v.get("storage")]
    if len(versions) != 1:
        sys.exit(f"{src}: expected one served+stored version, found {len(versions)}")
    (version,) = versions
    out = {
        "group": crd["spec"]["group"],
        "kind": crd["spec"]["names"]["kind"],
        "version": version["name"],
        "source_sha256": hashlib.sha256(raw).hexdigest(),
        "openAPIV3Schema": strip_descriptions(version["schema"]["openAPIV3Schema"]),
    }
    data = json.dumps(out, sort_keys=True, separators=(",", ":")).encode()
    with open(dst, "wb") as f:
        f.write(gzip.compress(data, compresslevel=9, mtime=0))
    print(f"{dst}: {out['group']}/{out['version']} {out['kind']}, {len(data)} bytes of JSON, "
          f"source sha256 {out['source_sha256']}")


if __name__ == "__main__":
    main()
