#!/usr/bin/env python3
"""scripts/bench-starttls/report.py — bench-starttls.sh's Markdown tables from
its per-run records (tab-separated: path, run, sessions/s, sessions ok,
failed, tlsgate worker busy s, Postfix CPU s, client CPU s, elapsed s):
medians per path, then the ratios of the medians.

  report.py RESULTS.tsv SESSIONS CONCURRENCY
"""
import math
import statistics
import sys

NAMES = {
    "a": "(a) direct (tlsgate bridging port 25)",
    "b": "(b) intercepted (`[[starttls]]`)",
    "c": "(c) intercepted + inspection loop",
}

rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1]) if line.strip()]
sessions, concurrency = sys.argv[2:4]


def num(text):
    try:
        return float(text)
    except ValueError:
        return math.nan


def runs(path):
    return [r for r in rows if r[0] == path]


def per_session_ms(row, col):
    ok = num(row[3])
    return 1e3 * num(row[col]) / ok if ok > 0 else math.nan


def med(values):
    values = [v for v in values if not math.isnan(v)]
    return statistics.median(values) if values else math.nan


def fmt(value, digits):
    return "-" if math.isnan(value) else f"{value:,.{digits}f}"


paths = [p for p in "abc" if runs(p)]
stats = {}
for p in paths:
    rs = runs(p)
    stats[p] = {
        "rate": med([num(r[2]) for r in rs]),
        "tlsgate": med([per_session_ms(r, 5) for r in rs]),
        "postfix": med([per_session_ms(r, 6) for r in rs]),
        "client": med([per_session_ms(r, 7) for r in rs]),
        "client_use": med([100 * num(r[7]) / num(r[8]) if num(r[8]) > 0 else math.nan for r in rs]),
    }

print(f"| path | SMTP+STARTTLS sessions/s ({sessions} sessions, {concurrency} at a time) | per run | "
      "failed | CPU ms per session: tlsgate worker | Postfix | client | client CPU use (% of one vCPU) |")
print("|---|---:|---|---:|---:|---:|---:|---:|")
for p in paths:
    s = stats[p]
    print(f"| {NAMES[p]} | {fmt(s['rate'], 0)} | {' / '.join(r[2] for r in runs(p))} | "
          f"{sum(int(num(r[4])) if not math.isnan(num(r[4])) else 0 for r in runs(p))} | "
          f"{fmt(s['tlsgate'], 3)} | {fmt(s['postfix'], 3)} | {fmt(s['client'], 3)} | {fmt(s['client_use'], 0)} |")
print()


def ratio(x, y):
    return x / y if y > 0 else math.nan


if "a" in stats:
    print("Ratios of the medians:")
    print()
    print("| | sessions/s | tlsgate worker CPU per session | Postfix CPU per session |")
    print("|---|---:|---:|---:|")
    for p, q in (("b", "a"), ("c", "a"), ("c", "b")):
        if p in stats and q in stats:
            print(f"| {p} ÷ {q} | {fmt(ratio(stats[p]['rate'], stats[q]['rate']), 2)} | "
                  f"{fmt(ratio(stats[p]['tlsgate'], stats[q]['tlsgate']), 2)} | "
                  f"{fmt(ratio(stats[p]['postfix'], stats[q]['postfix']), 2)} |")
    print()
for p in ("b", "c"):
    if p in stats:
        print(f"In {p}, tlsgate's worker spends {fmt(ratio(stats[p]['tlsgate'], stats[p]['postfix']), 2)} × "
              f"Postfix's CPU per session (tlsgate {fmt(stats[p]['tlsgate'], 3)} ms, "
              f"Postfix {fmt(stats[p]['postfix'], 3)} ms).")
