#!/usr/bin/env python3
"""Check 3: the Grafana dashboard, its provisioning and the Prometheus rules name only metrics
(and labels) that a running shiftserve exports.

    dashboard.py --metrics-url http://127.0.0.1:PORT/metrics [--prometheus http://127.0.0.1:PPORT]
    dashboard.py --metrics-file scrape.txt

What it checks (exit 1 with the list of problems otherwise):
- every JSON under deploy/grafana/dashboards parses, has a uid/title, unique panel ids, panels on
  the 24-column grid without overlap, a datasource for every target, and matches its generator
  (deploy/grafana/make_dashboard.py --check);
- the provisioning YAMLs parse; the datasource is Prometheus at the compose service's address, the
  dashboard provider's path is where docker-compose.yml mounts deploy/grafana/dashboards;
- every PromQL expression (dashboard targets, template variable queries, recording and alerting
  rules) names only metrics present in the scrape (a histogram `x` counts for `x_bucket`, `x_sum`,
  `x_count`; rules may also use recording-rule names), and every label it matches or groups by is
  a label of those series (plus Prometheus' own `job`/`instance`, and `le` on buckets);
- with --prometheus, every expression, Grafana variables substituted, is also parsed and evaluated
  by that real Prometheus (/api/v1/query answers success); with --require-data every dashboard
  query and recording rule must also return at least one series (alerts may be empty).
"""
import argparse
import json
import re
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "deploy" / "grafana"
RULES = ROOT / "deploy" / "prometheus" / "rules"
COMPOSE = ROOT / "deploy" / "docker-compose.yml"

PROBLEMS = []


def problem(msg):
    PROBLEMS.append(msg)


# ---- exported metrics ---------------------------------------------------------------------------

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+\S+")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="(?:[^"\\]|\\.)*"')


def exported(text):
    """{series name: set of label names} from a Prometheus text exposition."""
    names = {}
    types = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, typ = line.split(None, 3)
            types[name] = typ.strip()
            continue
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        if not m:
            continue
        labels = set(LABEL.findall(m.group(3) or ""))
        names.setdefault(m.group(1), set()).update(labels)
    return names, types


# ---- PromQL name extraction ---------------------------------------------------------------------

KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
            "and", "or", "unless", "inf", "nan", "atan2", "start", "end"}
AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
                "bottomk", "topk", "quantile", "limitk", "limit_ratio"}
LABEL_LIST_OPS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`|\$\{?[A-Za-z_][A-Za-z0-9_]*\}?'
                   r'|\d+(?:\.\d+)?(?:e[+-]?\d+)?[smhdwy]?|[A-Za-z_:][A-Za-z0-9_:]*|\S')


def tokens(expr):
    return TOKEN.findall(expr)


def analyse(expr):
    """Returns (metric names, [(metric or None, label names)] used with each selector/grouping)."""
    toks = tokens(expr)
    metrics = []
    label_uses = []  # (metric name or None, label) ; None = grouping label (any metric in expr)
    i = 0
    n = len(toks)
    while i < n:
        t = toks[i]
        nxt = toks[i + 1] if i + 1 < n else ""
        if t in LABEL_LIST_OPS and nxt == "(":
            j = i + 2
            while j < n and toks[j] != ")":
                if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", toks[j]):
                    label_uses.append((None, toks[j]))
                j += 1
            i = j + 1
            continue
        if t == "[":  # range or subquery: skip to ]
            while i < n and toks[i] != "]":
                i += 1
            i += 1
            continue
        if t == "{":  # matchers of a bare selector without a metric name
            i = matchers(toks, i, None, label_uses)
            continue
        if re.fullmatch(r"[A-Za-z_:][A-Za-z0-9_:]*", t) and t.lower() not in KEYWORDS:
            if nxt == "(" or (t in AGGREGATIONS and nxt in ("by", "without")):
                i += 1  # function or aggregation operator
                continue
            metrics.append(t)
            if nxt == "{":
                i = matchers(toks, i + 1, t, label_uses)
                continue
        i += 1
    return metrics, label_uses


def matchers(toks, i, metric, label_uses):
    """toks[i] == '{'; records label names, returns the index after the closing '}'."""
    j = i + 1
    expect_name = True
    while j < len(toks) and toks[j] != "}":
        t = toks[j]
        if expect_name and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", t):
            label_uses.append((metric, t))
            expect_name = False
        elif t == ",":
            expect_name = True
        j += 1
    return j + 1


def grafana_substitute(expr):
    return (expr.replace("$__rate_interval", "1m").replace("$__interval", "15s")
            .replace("${model}", ".*").replace("$model", ".*"))


# ---- collecting expressions ---------------------------------------------------------------------

def dashboard_exprs(path, doc):
    out = []
    for var in doc.get("templating", {}).get("list", []):
        q = var.get("query")
        if var.get("type") == "query":
            text = q.get("query") if isinstance(q, dict) else q
            m = re.fullmatch(r"\s*label_values\((.*),\s*([A-Za-z_][A-Za-z0-9_]*)\)\s*", text or "")
            if not m:
                problem(f"{path.name}: template variable {var.get('name')} query not understood: {text}")
                continue
            out.append((f"{path.name} variable ${var['name']}", m.group(1), [m.group(2)], True))
    for p in walk_panels(doc.get("panels", [])):
        for t in p.get("targets", []):
            if "expr" not in t:
                problem(f"{path.name}: panel '{p.get('title')}' target {t.get('refId')} has no expr")
                continue
            if not t.get("datasource") and not p.get("datasource"):
                problem(f"{path.name}: panel '{p.get('title')}' target {t.get('refId')} has no datasource")
            out.append((f"{path.name} panel '{p.get('title')}' {t.get('refId')}", t["expr"], [], True))
    return out


def walk_panels(panels):
    for p in panels:
        yield p
        yield from walk_panels(p.get("panels", []))


def check_layout(path, doc):
    ids = set()
    cells = {}
    for p in walk_panels(doc.get("panels", [])):
        pid = p.get("id")
        if pid in ids:
            problem(f"{path.name}: duplicate panel id {pid}")
        ids.add(pid)
        g = p.get("gridPos") or {}
        x, y, w, h = (g.get(k) for k in ("x", "y", "w", "h"))
        if None in (x, y, w, h) or x < 0 or w <= 0 or h <= 0 or x + w > 24:
            problem(f"{path.name}: panel '{p.get('title')}' has a bad gridPos {g}")
            continue
        for cx in range(x, x + w):
            for cy in range(y, y + h):
                if (cx, cy) in cells:
                    problem(f"{path.name}: panels '{cells[(cx, cy)]}' and '{p.get('title')}' overlap")
                    break
                cells[(cx, cy)] = p.get("title")
            else:
                continue
            break
    return len(ids)


def rule_exprs():
    out = []
    recorded = set()
    for f in sorted(RULES.glob("*.yml")):
        doc = yaml.safe_load(f.read_text())
        for g in doc.get("groups", []):
            for r in g.get("rules", []):
                if "record" in r:
                    recorded.add(r["record"])
                # alerts are conditions: no result is the healthy answer
                out.append((f"{f.name} {r.get('record') or r.get('alert')}", r["expr"], [], "record" in r))
    return out, recorded


def check_provisioning(dashboards_found):
    compose = yaml.safe_load(COMPOSE.read_text())
    graf = compose["services"]["grafana"]
    mounts = {}
    for v in graf.get("volumes", []):
        src, dst = v.split(":")[:2]
        mounts[(COMPOSE.parent / src).resolve()] = dst
    prov_dir = GRAFANA / "provisioning"
    if mounts.get(prov_dir.resolve()) != "/etc/grafana/provisioning":
        problem("docker-compose.yml does not mount deploy/grafana/provisioning at /etc/grafana/provisioning")
    dash_target = mounts.get((GRAFANA / "dashboards").resolve())
    if not dash_target:
        problem("docker-compose.yml does not mount deploy/grafana/dashboards into grafana")

    ds_files = sorted((prov_dir / "datasources").glob("*.y*ml"))
    dash_files = sorted((prov_dir / "dashboards").glob("*.y*ml"))
    if not ds_files or not dash_files:
        problem("provisioning needs datasources/*.yml and dashboards/*.yml")
    uids = set()
    for f in ds_files:
        doc = yaml.safe_load(f.read_text())
        for ds in doc.get("datasources", []):
            uids.add(ds.get("uid"))
            if ds.get("type") != "prometheus":
                problem(f"{f.name}: datasource {ds.get('name')} is not of type prometheus")
            url = urllib.parse.urlparse(ds.get("url", ""))
            prom = compose["services"].get(url.hostname or "")
            if prom is None or "prometheus" not in prom.get("image", ""):
                problem(f"{f.name}: datasource url {ds.get('url')} does not name the compose Prometheus service")
            elif url.port != 9090:
                problem(f"{f.name}: datasource url {ds.get('url')} is not Prometheus' port 9090")
    for f in dash_files:
        doc = yaml.safe_load(f.read_text())
        for prov in doc.get("providers", []):
            path = (prov.get("options") or {}).get("path")
            if path != dash_target:
                problem(f"{f.name}: provider path {path} is not where compose mounts the dashboards ({dash_target})")
    if GRAFANA.joinpath("dashboards").exists():
        home = graf.get("environment", {}).get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
        if home and dash_target and Path(home).name not in dashboards_found:
            problem(f"GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH {home} is not a provisioned dashboard")
    return uids


def prometheus_eval(prom, exprs, require_data):
    evaluated = with_data = 0
    for where, expr, _, must_have_data in exprs:
        q = grafana_substitute(expr)
        url = f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": q})
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                doc = json.load(r)
        except urllib.error.HTTPError as e:
            doc = json.loads(e.read() or b"{}")
        if doc.get("status") != "success":
            problem(f"{where}: Prometheus rejects the expression: {doc.get('error')} :: {q}")
            continue
        evaluated += 1
        if doc["data"]["result"]:
            with_data += 1
        elif require_data and must_have_data:
            problem(f"{where}: no data from Prometheus for {q}")
    return evaluated, with_data


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--metrics-url")
    src.add_argument("--metrics-file")
    ap.add_argument("--prometheus", help="base URL of a Prometheus to evaluate every expression on")
    ap.add_argument("--dashboard", help="check this dashboard JSON instead of deploy/grafana/dashboards "
                    "(no generator comparison; used by dashboard.sh's self-test)")
    ap.add_argument("--require-data", action="store_true",
                    help="with --prometheus: every dashboard query and recording rule must return a series")
    args = ap.parse_args()

    if args.metrics_url:
        with urllib.request.urlopen(args.metrics_url, timeout=5) as r:
            text = r.read().decode()
    else:
        text = Path(args.metrics_file).read_text()
    series, types = exported(text)
    if not series:
        sys.exit("the scrape holds no metric")
    allowed = dict(series)
    for name, typ in types.items():
        if typ == "histogram":
            # `x` itself is not a series; its parts are (and carry `le` on the buckets)
            for part in ("_bucket", "_sum", "_count"):
                if name + part not in series:
                    problem(f"histogram {name} exported without {name}{part}")

    # the generator and the committed JSON agree
    if not args.dashboard:
        gen = subprocess.run([sys.executable, str(GRAFANA / "make_dashboard.py"), "--check"],
                             capture_output=True, text=True)
        if gen.returncode != 0:
            problem(gen.stderr.strip() or "make_dashboard.py --check failed")

    exprs = []
    dashboards = [Path(args.dashboard)] if args.dashboard else sorted((GRAFANA / "dashboards").glob("*.json"))
    if not dashboards:
        problem("no dashboard JSON under deploy/grafana/dashboards")
    names_found = set()
    n_panels = 0
    ds_uids = check_provisioning({d.name for d in dashboards} | ({"shiftserve.json"} if args.dashboard else set()))
    for d in dashboards:
        try:
            doc = json.loads(d.read_text())
        except json.JSONDecodeError as e:
            problem(f"{d.name}: not JSON: {e}")
            continue
        names_found.add(d.name)
        for key in ("uid", "title", "panels", "schemaVersion"):
            if key not in doc:
                problem(f"{d.name}: missing {key}")
        n_panels += check_layout(d, doc)
        ds_var = [v for v in doc.get("templating", {}).get("list", []) if v.get("type") == "datasource"]
        if not ds_var or ds_var[0].get("query") != "prometheus":
            problem(f"{d.name}: expects a `datasource` template variable of type prometheus")
        elif ds_var[0].get("current", {}).get("value") not in ds_uids:
            problem(f"{d.name}: default datasource {ds_var[0].get('current')} is not a provisioned uid {ds_uids}")
        exprs += dashboard_exprs(d, doc)
    rexprs, recorded = rule_exprs()

    checked_names = set()
    for where, expr, extra_labels, _ in exprs + rexprs:
        metrics, label_uses = analyse(expr)
        if not metrics:
            problem(f"{where}: no metric found in {expr!r}")
        known = []
        for m in metrics:
            if m in allowed:
                known.append(m)
                checked_names.add(m)
            elif m in recorded:
                checked_names.add(m)
            else:
                problem(f"{where}: metric {m} is not exported by the server")
        labels_of_expr = set().union(*(allowed[m] for m in known)) if known else set()
        labels_of_expr |= {"job", "instance"}
        if any(m.endswith("_bucket") for m in known):
            labels_of_expr.add("le")
        if any(m in recorded for m in metrics):
            continue  # recording rules keep only their grouping labels; the rule itself is checked
        for metric, label in label_uses + [(None, lab) for lab in extra_labels]:
            if metric is not None and metric not in allowed:
                continue  # already reported as not exported
            if metric is None and not known:
                continue
            pool = (allowed.get(metric, set()) | {"job", "instance"}) if metric in allowed else labels_of_expr
            if metric and metric.endswith("_bucket"):
                pool = pool | {"le"}
            if label not in pool:
                problem(f"{where}: label `{label}` is not a label of {metric or ', '.join(known)}")

    print(f"dashboards: {len(dashboards)} ({n_panels} panels); expressions: {len(exprs)} in dashboards, "
          f"{len(rexprs)} in rules; exported series names: {len(series)}")
    print(f"metrics referenced (exported by the server, or recorded by the rules): {', '.join(sorted(checked_names))}")
    if args.prometheus:
        ev, data = prometheus_eval(args.prometheus, exprs + rexprs, args.require_data)
        print(f"Prometheus at {args.prometheus} parsed and evaluated {ev}/{len(exprs) + len(rexprs)} expressions "
              f"({data} returned data)")
    sys.stdout.flush()
    if PROBLEMS:
        print(f"{len(PROBLEMS)} problem(s):", file=sys.stderr)
        for p in PROBLEMS:
            print(f"  - {p}", file=sys.stderr)
        return 1
    print("OK: every dashboard/rule expression names exported metrics and labels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
