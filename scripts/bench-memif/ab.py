#!/usr/bin/env python3
"""bench-memif --baseline: tlsgate's process CPU per connection (conn) and
per GB (bulk) of this tree's binary against the baseline binary, from the
records of one run. Usage: ab.py RECORDS BASELINE-RECORDS (the lines
bench-memif.sh writes); prints a Markdown table of the medians over the runs
of each value and of the per-run ratio (this tree ÷ baseline)."""
import statistics
import sys


def load(path):
    rows = {}
    for line in open(path):
        fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
        if fields.get("valid") != "ok":
            continue
        cpu = float(fields["cpu"])
        if fields["load"] == "conn":
            value = cpu / int(fields["units"]) * 1000  # CPU ms per connection
        else:
            value = cpu / (int(fields["bytes"]) / 1e9)  # CPU s per GB
        rows[(fields["variant"], fields["load"], fields["run"])] = value
    return rows


new, base = load(sys.argv[1]), load(sys.argv[2])
print("| variant | workload | baseline | this tree | this tree ÷ baseline (median of runs) |")
print("|---|---|---|---|---|")
for variant in ("one", "inspect"):
    for load_name, unit in (("conn", "CPU ms per connection"), ("bulk", "CPU s per GB")):
        runs = sorted(r for (v, w, r) in new if v == variant and w == load_name and (v, w, r) in base)
        if not runs:
            continue
        ratios = [new[(variant, load_name, r)] / base[(variant, load_name, r)] for r in runs]
        print(
            f"| {variant} | {load_name} ({unit}) "
            f"| {statistics.median(base[(variant, load_name, r)] for r in runs):.3f} "
            f"| {statistics.median(new[(variant, load_name, r)] for r in runs):.3f} "
            f"| {statistics.median(ratios):.2f} ({', '.join(f'{x:.2f}' for x in ratios)}) |"
        )
