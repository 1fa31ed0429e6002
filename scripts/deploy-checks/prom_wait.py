#!/usr/bin/env python3
"""prom_wait.py PROM_URL EXPR MIN SECONDS: polls an instant query until its first value is >= MIN
(bounded by SECONDS); exit 1 on timeout. Loopback Prometheus only."""
import json
import sys
import time
import urllib.parse
import urllib.request

prom, expr, want, secs = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
deadline = time.time() + secs
last = None
while time.time() < deadline:
    url = f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            res = json.load(r)["data"]["result"]
        if res:
            last = float(res[0]["value"][1])
            if last >= want:
                print(f"  {expr} = {last:g} (>= {want:g})")
                sys.exit(0)
    except OSError:
        pass
    time.sleep(1)
print(f"  timeout: {expr} = {last} after {secs:g} s, wanted >= {want:g}", file=sys.stderr)
sys.exit(1)
