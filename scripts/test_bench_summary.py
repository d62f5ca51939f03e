#!/usr/bin/env python3
"""Checks scripts/bench-summary.py: medians over runs and ratios to the baseline broker."""
import json, os, subprocess, sys, tempfile

def report(mb, p99_us, cpu, rss_mib, e2e=None):
    pct = lambda v: {"p50": v // 2, "p99": v, "p99_9": v, "p99_99": v, "max": v}
    return {"mb_per_second": mb, "publish_latency_us": pct(p99_us),
            "e2e_latency_us": pct(e2e) if e2e else None,
            "broker_cpu_seconds_per_gb": cpu, "broker_peak_rss_bytes": rss_mib * 1048576}

with tempfile.TemporaryDirectory() as d:
    runs = {"a": [report(300, 4000, 0.6, 60), report(330, 5000, 0.7, 62), report(310, 6000, 0.5, 61)],
            "b": [report(150, 8000, 4.0, 600), report(170, 9500, 4.2, 640), report(155, 7000, 3.8, 605)]}
    for broker, reports in runs.items():
        for i, r in enumerate(reports, 1):
            with open(os.path.join(d, f"{broker}-run{i}.json"), "w") as f:
                json.dump(r, f)
    out = subprocess.run([sys.executable, os.path.join(os.path.dirname(__file__), "bench-summary.py"), d, "a", "b"],
                         capture_output=True, text=True, check=True).stdout
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in out.splitlines() if line.startswith("| a") or line.startswith("| b")}
    checks = [
        (rows["a (3)"][0] == "310.00", "median MB/s of the baseline"),
        (rows["b (3)"][0] == "155.00 (0.50x)", "median and ratio of the other broker"),
        (rows["b (3)"][2] == "8.00 (1.60x)", "publish p99 median and ratio"),
        (rows["a (3)"][3] == "-", "no e2e figures when not measured"),
        (rows["b (3)"][6].startswith("605.00 (9.92x)"), "RSS ratio"),
    ]
    failed = [what for ok, what in checks if not ok]
    for what in failed:
        print(f"bench-summary: FAIL {what}\n{out}")
    print(f"bench-summary: {len(checks) - len(failed)} passed, {len(failed)} failed")
    sys.exit(1 if failed else 0)
