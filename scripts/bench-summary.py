#!/usr/bin/env python3
"""Medians per broker over the JSON reports of scripts/bench-compare.sh, with ratios to the
first broker named (the baseline)."""
import json, statistics, sys, glob, os

out, brokers = sys.argv[1], sys.argv[2:]
metrics = [
    ("MB/s", lambda r: r["mb_per_second"]),
    ("publish p50 ms", lambda r: r["publish_latency_us"]["p50"] / 1000),
    ("publish p99 ms", lambda r: r["publish_latency_us"]["p99"] / 1000),
    ("e2e p50 ms", lambda r: r["e2e_latency_us"]["p50"] / 1000 if r["e2e_latency_us"] else None),
    ("e2e p99 ms", lambda r: r["e2e_latency_us"]["p99"] / 1000 if r["e2e_latency_us"] else None),
    ("broker CPU s/GB", lambda r: r["broker_cpu_seconds_per_gb"]),
    ("broker peak RSS MiB", lambda r: (r["broker_peak_rss_bytes"] or 0) / 1048576),
]
medians = {}
for b in brokers:
    reports = [json.load(open(p)) for p in sorted(glob.glob(os.path.join(out, f"{b}-run*.json")))]
    medians[b] = {}
    for name, f in metrics:
        values = [v for v in (f(r) for r in reports) if v is not None]
        medians[b][name] = statistics.median(values) if values else None
    medians[b]["runs"] = len(reports)
base = brokers[0]
print()
print("| broker (runs) | " + " | ".join(n for n, _ in metrics) + " |")
print("|---|" + "---|" * len(metrics))
for b in brokers:
    cells = []
    for name, _ in metrics:
        v, bv = medians[b][name], medians[base][name]
        if v is None:
            cells.append("-")
        elif b == base or not bv:
            cells.append(f"{v:.2f}")
        else:
            cells.append(f"{v:.2f} ({v / bv:.2f}x)")
    print(f"| {b} ({medians[b]['runs']}) | " + " | ".join(cells) + " |")
