#!/usr/bin/env python3
"""Tables and chart of scripts/bench-memif.sh from its per-run records.

  report.py DIR SVG

DIR holds records.kv (one record per run, variant and workload: key=value,
space-separated; variant = one, inspect, two (2 workers) or burstN (1
worker, dataplane.burst_size = N); cpu = tlsgate's process CPU s, workers =
its worker threads' CPU s, comma-separated; box = the box's CPU s; resumed =
"resumed/logged" upstream legs of the variant's connection log),
floor-RUN.json (crates/mitm/examples/tls_floor.rs --json), floor.kv, and
scaling-{conn,bulk}.json (the last line of the worker_scaling example).
Prints the Markdown tables, then a comment line
"<!-- not met: LOADS -->" naming the workloads (conn, bulk) whose target
against the floor was not met (the script profiles those). Writes the chart.
"""
import json
import math
import statistics
import sys
from html import escape

d, svg_path = sys.argv[1:3]
NAN = float("nan")
VARIANTS = {"one": "1 worker", "inspect": "1 worker + inspection loop", "two": "2 workers"}
TARGET_CONN, TARGET_GB, TARGET_SCALING = 1.3, 3.0, 1.8


def num(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return NAN


def load(name):
    rows = []
    try:
        with open(f"{d}/{name}") as f:
            for line in f:
                if line.strip():
                    rows.append(dict(kv.split("=", 1) for kv in line.split()))
    except FileNotFoundError:
        pass
    return rows


def fmt(value, digits):
    return "-" if value is None or math.isnan(value) else f"{value:,.{digits}f}"


def ratio(x, y):
    return x / y if y and not math.isnan(x) and not math.isnan(y) and y > 0 else NAN


def median(values):
    vals = [v for v in values if not math.isnan(v)]
    return statistics.median(vals) if vals else NAN


records = load("records.kv")
floor_env = {r.get("run"): r for r in load("floor.kv")}
runs = sorted({r["run"] for r in records}, key=int)
BURSTS = sorted({r["variant"] for r in records if r["variant"].startswith("burst")}, key=lambda v: int(v[5:]))
for v in BURSTS:
    VARIANTS[v] = f"1 worker, burst_size {v[5:]}"


def record(run, variant, what):
    return next((r for r in records if r["run"] == run and r["variant"] == variant and r["load"] == what), None)


def floor_json(run):
    try:
        with open(f"{d}/floor-{run}.json") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def resumed_share(r):
    try:
        resumed, logged = (int(x) for x in r.get("resumed", "-").split("/"))
        return resumed / logged if logged else NAN
    except ValueError:
        return NAN


def floor_conn(run, share):
    """The two handshakes' CPU s per connection: the server role plus the
    client role weighted by the share of upstream legs that resumed (the
    full-handshake floor when the share is unknown), as bench-compare's report."""
    js = floor_json(run)
    if not js:
        return NAN
    if math.isnan(share):
        return num(js.get("handshakes_cpu_s_per_connection"))
    return (num(js.get("server_role_cpu_s")) + share * num(js.get("client_role_resumed_cpu_s"))
            + (1 - share) * num(js.get("client_role_full_cpu_s")))


def floor_gb(run):
    js = floor_json(run)
    return num(js.get("aead_cpu_s_per_gb")) if js else NAN


def workers_of(r):
    return [num(x) for x in r.get("workers", "").split(",") if x] if r else []


def per_unit(r, key):
    """CPU of KEY per connection (ms) or per GB (s)."""
    if not r:
        return NAN
    if r["load"] == "conn":
        return num(r.get(key)) / num(r["units"]) * 1000
    return num(r.get(key)) / (num(r["bytes"]) / 1e9)


def rate(r):
    """Connections/s or MB/s, wall clock of the generator's run."""
    if not r:
        return NAN
    return (num(r["units"]) if r["load"] == "conn" else num(r["bytes"]) / 1e6) / num(r["wall"])


def floor_for(run, r):
    if not r:
        return NAN
    return floor_conn(run, resumed_share(r)) * 1000 if r["load"] == "conn" else floor_gb(run)


def load_scaling(what):
    try:
        with open(f"{d}/scaling-{what}.json") as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def cells(fn, digits):
    """The median over the runs, then the per-run values."""
    values = [fn(run) for run in runs]
    return f"{fmt(median(values), digits)} ({' / '.join(fmt(v, digits) for v in values)})"


out = []
w = out.append
w(f"Medians of {len(runs)} run(s); each run's values in parentheses, in run order.")
w("")
w("| | CPU ms per connection | ÷ handshake floor | CPU s per GB | ÷ AEAD floor | worker thread's share "
  "| conn/s, MB/s (wall) | other processes (cores) |")
w("|---|---:|---:|---:|---:|---:|---:|---:|")
w(f"| rustls floor: two handshakes / AES-256-GCM decrypt + encrypt | "
  f"{cells(lambda run: floor_for(run, record(run, 'one', 'conn')), 3)} | 1 | "
  f"{cells(floor_gb, 3)} | 1 | | | |")
med = {}
for v, name in VARIANTS.items():
    if not any(r["variant"] == v for r in records):
        continue
    med[v] = {}
    for key, label in (("cpu", "process CPU"), ("box", "the box's process CPU")):
        if key == "box" and v != "inspect":
            continue
        conn = lambda run: per_unit(record(run, v, "conn"), key)
        gb = lambda run: per_unit(record(run, v, "bulk"), key)
        rconn = lambda run: ratio(conn(run), floor_for(run, record(run, v, "conn")))
        rgb = lambda run: ratio(gb(run), floor_gb(run))
        med[v][key] = {"conn": median([conn(r) for r in runs]), "gb": median([gb(r) for r in runs]),
                       "rconn": median([rconn(r) for r in runs]), "rgb": median([rgb(r) for r in runs])}
        wall = other = share = ""
        if key == "cpu":
            share = ", ".join(
                fmt(median([ratio(sum(workers_of(record(r, v, what))), num(record(r, v, what)["cpu"]))
                            for r in runs if record(r, v, what)]) * 100, 0) + " %" for what in ("conn", "bulk"))
            wall = (f"{fmt(median([rate(record(r, v, 'conn')) for r in runs]), 0)}, "
                    f"{fmt(median([rate(record(r, v, 'bulk')) for r in runs]), 0)}")
            other = " / ".join(
                fmt(ratio(num(record(r, v, what)["other"]), num(record(r, v, what)["wall"])), 2)
                for r in runs for what in ("conn", "bulk") if record(r, v, what))
        bold = "**" if key == "cpu" else ""
        # The box is not judged against the floor: it does no TLS.
        rc, rg = ("", "") if key == "box" else (f"{bold}{cells(rconn, 2)}{bold}", f"{bold}{cells(rgb, 2)}{bold}")
        w(f"| tlsgate, {name}: {label} | {cells(conn, 3)} | {rc} | {cells(gb, 3)} | {rg} | {share} | {wall} "
          f"| {other} |")
w("")
w("Upstream legs resumed (tlsgate's connection log, per run, 1 worker): "
  + ", ".join(f"run {run}: {(record(run, 'one', 'conn') or {}).get('resumed', '-')}" for run in runs)
  + ". Floor per run: " + "; ".join(
      f"run {run}: server role {fmt(num((floor_json(run) or {}).get('server_role_cpu_s')) * 1e6, 0)} µs, "
      f"client role full {fmt(num((floor_json(run) or {}).get('client_role_full_cpu_s')) * 1e6, 0)} µs / "
      f"resumed {fmt(num((floor_json(run) or {}).get('client_role_resumed_cpu_s')) * 1e6, 0)} µs, "
      f"CPU / wall {fmt(num((floor_json(run) or {}).get('cpu_over_wall')), 2)}, other processes "
      f"{fmt(num(floor_env.get(run, {}).get('other')), 1)} CPU s" for run in runs) + ".")

scale = {}
scaling_rows = [(what, label, load_scaling(what)) for what, label in
                (("conn", "connections/s (2000 B responses)"), ("bulk", "GB/s (4 connections per thread)"))]
if any(js for _, _, js in scaling_rows):
    w("")
    w("2 workers against 1, in memory (`worker_scaling` example; see \"2 workers against 1\" above):")
    w("")
    w("| workload | 2 ÷ 1, CPU time of the busier thread | per round | 2 ÷ 1, wall clock | per round |")
    w("|---|---:|---:|---:|---:|")
    for what, label, js in scaling_rows:
        scale[what] = num(js.get("cpu_ratio"))
        per_round = lambda key: " / ".join(fmt(num(x), 2) for x in js.get(key, []))
        w(f"| {label} | **{fmt(scale[what], 2)}** | {per_round('cpu_ratios')} | "
          f"{fmt(num(js.get('wall_ratio')), 2)} | {per_round('wall_ratios')} |")




def per_run_ratio(fn):
    """The median over the runs of fn(run, what) for conn and bulk."""
    return {what: median([fn(run, what) for run in runs]) for what in ("conn", "bulk")}


def over_one(variant, fn):
    """Per run and workload, fn of the variant's record ÷ fn of the 1-worker variant's."""
    return lambda run, what: ratio(fn(record(run, variant, what)), fn(record(run, "one", what)))


def busier_worker(r):
    return max(workers_of(r), default=NAN)


memif_scale = {}
if any(r["variant"] == "two" for r in records):
    rates = per_run_ratio(over_one("two", rate))
    cpu_unit = per_run_ratio(over_one("two", lambda r: per_unit(r, "cpu")))
    # With a vCPU each, 2 workers saturate when the busier one does: the 1
    # worker's CPU for the same load ÷ the busier worker's.
    memif_scale = per_run_ratio(lambda run, what: ratio(busier_worker(record(run, "one", what)),
                                                        busier_worker(record(run, "two", what))))
    w("")
    w("2 workers against 1 over memif (the same workloads; `tlsgate-loadgen --rx-queues 2`):")
    w("")
    w("| 2 workers ÷ 1 worker | conn workload | bulk workload |")
    w("|---|---:|---:|")
    w(f"| capacity: the 1 worker's CPU ÷ the busier of the 2 workers' | **{fmt(memif_scale['conn'], 2)}** "
      f"| **{fmt(memif_scale['bulk'], 2)}** |")
    w(f"| wall rate (connections/s, MB/s) | {fmt(rates['conn'], 2)} | {fmt(rates['bulk'], 2)} |")
    w(f"| tlsgate's process CPU per connection, per GB | {fmt(cpu_unit['conn'], 2)} | {fmt(cpu_unit['bulk'], 2)} |")
    w("")
    w("The 2 workers' CPU seconds per run (conn; bulk): " + "; ".join(
        f"run {run}: {(record(run, 'two', 'conn') or {}).get('workers', '-')}; "
        f"{(record(run, 'two', 'bulk') or {}).get('workers', '-')}" for run in runs) + ".")

if BURSTS:
    w("")
    w("Burst sizes (`dataplane.burst_size`), 1 worker, each ÷ the 1-worker variant's (default burst size), "
      "median of the per-run ratios (each run's in parentheses):")
    w("")
    w("| burst_size | CPU ms per connection | ÷ default | CPU s per GB | ÷ default | conn/s, MB/s (wall) |")
    w("|---|---:|---:|---:|---:|---:|")
    for v in BURSTS:
        conn = lambda run, v=v: per_unit(record(run, v, "conn"), "cpu")
        gb = lambda run, v=v: per_unit(record(run, v, "bulk"), "cpu")
        rconn = lambda run, v=v: over_one(v, lambda r: per_unit(r, "cpu"))(run, "conn")
        rgb = lambda run, v=v: over_one(v, lambda r: per_unit(r, "cpu"))(run, "bulk")
        w(f"| {v[5:]} | {cells(conn, 3)} | **{cells(rconn, 2)}** | {cells(gb, 3)} | **{cells(rgb, 2)}** | "
          f"{fmt(median([rate(record(r, v, 'conn')) for r in runs]), 0)}, "
          f"{fmt(median([rate(record(r, v, 'bulk')) for r in runs]), 0)} |")


def verdict(value, target, higher=False):
    if math.isnan(value):
        return "not measured"
    return "**met**" if (value >= target if higher else value <= target) else "**not met**"


one = med.get("one", {}).get("cpu", {})
insp = med.get("inspect", {}).get("cpu", {})
targets = [
    ("memif, CPU per intercepted connection ≤ 1.3 × the two-handshake rustls floor", "1 worker",
     one.get("rconn", NAN), TARGET_CONN, False),
    ("memif, CPU per GB ≤ 3 × bare AEAD", "1 worker", one.get("rgb", NAN), TARGET_GB, False),
    ("(the same with the inspection loop, per connection)", "1 worker + loop", insp.get("rconn", NAN),
     TARGET_CONN, False),
    ("(the same with the inspection loop, per GB)", "1 worker + loop", insp.get("rgb", NAN), TARGET_GB, False),
    ("2 workers ≥ 1.8 × 1 worker, connections/s", "memif, CPU of the busier worker", memif_scale.get("conn", NAN),
     TARGET_SCALING, True),
    ("2 workers ≥ 1.8 × 1 worker, GB/s", "memif, CPU of the busier worker", memif_scale.get("bulk", NAN),
     TARGET_SCALING, True),
    ("2 workers ≥ 1.8 × 1 worker, connections/s", "in memory, CPU time", scale.get("conn", NAN),
     TARGET_SCALING, True),
    ("2 workers ≥ 1.8 × 1 worker, GB/s", "in memory, CPU time", scale.get("bulk", NAN),
     TARGET_SCALING, True),
]
w("")
w("Issue 17's targets, from the medians above:")
w("")
w("| target | measured on | ratio | verdict |")
w("|---|---|---:|---|")
for text, variant, value, target, higher in targets:
    w(f"| {text} | {variant} | {fmt(value, 2)} | {verdict(value, target, higher)} |")
w("")
w("Per run, validity: " + "; ".join(
    f"run {run}: " + ", ".join(f"{r['variant']} {r['load']} {r['valid'].replace('_', ' ')}"
                               for r in records if r["run"] == run) for run in runs) + ".")
unmet = []
if verdict(one.get("rconn", NAN), TARGET_CONN) == "**not met**":
    unmet.append("conn")
if verdict(one.get("rgb", NAN), TARGET_GB) == "**not met**":
    unmet.append("bulk")
print("\n".join(out))
print(f"<!-- not met: {' '.join(unmet)} -->" if unmet else "")

# --- chart ------------------------------------------------------------------------
floor_c = median([floor_for(run, record(run, "one", "conn")) for run in runs])
floor_g = median([floor_gb(run) for run in runs])
panels = [
    ("CPU per intercepted connection", "CPU ms", [
        ("rustls floor", floor_c, "#9e9e9e"), ("1 worker", one.get("conn", NAN), "#2c6fb7"),
        ("+ loop", insp.get("conn", NAN), "#8db4e2"),
        ("box", med.get("inspect", {}).get("box", {}).get("conn", NAN), "#5a9e4b")],
     TARGET_CONN * floor_c, "target 1.3 × floor", 2),
    ("CPU per GB relayed", "CPU s", [
        ("AEAD floor", floor_g, "#9e9e9e"), ("1 worker", one.get("gb", NAN), "#2c6fb7"),
        ("+ loop", insp.get("gb", NAN), "#8db4e2"),
        ("box", med.get("inspect", {}).get("box", {}).get("gb", NAN), "#5a9e4b")],
     TARGET_GB * floor_g, "target 3 × floor", 2),
    ("2 workers ÷ 1 worker (CPU)", "ratio", [
        ("memif conn", memif_scale.get("conn", NAN), "#2c6fb7"), ("memif GB", memif_scale.get("bulk", NAN), "#2c6fb7"),
        ("mem conn", scale.get("conn", NAN), "#5a9e4b"), ("mem GB", scale.get("bulk", NAN), "#5a9e4b")],
     TARGET_SCALING, "target 1.8", 2),
]
PW, PH = 340, 260
W, H = PW * len(panels), PH + 80
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
       'font-family="DejaVu Sans, Arial, sans-serif" font-size="11">',
       f'<rect width="{W}" height="{H}" fill="white"/>',
       f'<text x="{W / 2}" y="22" text-anchor="middle" font-size="15" font-weight="bold">'
       'tlsgate over memif (no kernel in the path): its CPU against the rustls floor</text>']
for i, (title, unit, bars, target, target_label, digits) in enumerate(panels):
    x0, y0 = i * PW, 40
    top, base, left = y0 + 40, y0 + PH - 40, x0 + 40
    values = [v for _, v, _ in bars if not math.isnan(v)] + ([target] if not math.isnan(target) else [])
    vmax = max(values) * 1.15 if values and max(values) > 0 else 1
    svg.append(f'<text x="{x0 + PW / 2}" y="{y0 + 14}" text-anchor="middle" font-weight="bold">{escape(title)}</text>')
    svg.append(f'<text x="{x0 + 8}" y="{top - 10}" fill="#666">{escape(unit)}</text>')
    svg.append(f'<line x1="{left}" y1="{base}" x2="{x0 + PW - 20}" y2="{base}" stroke="#444"/>')
    bw = (PW - 70) / len(bars)
    for j, (label, value, color) in enumerate(bars):
        bx = left + j * bw + bw * 0.15
        h = 0 if math.isnan(value) else (base - top) * value / vmax
        svg.append(f'<rect x="{bx:.1f}" y="{base - h:.1f}" width="{bw * 0.7:.1f}" height="{h:.1f}" fill="{color}"/>')
        svg.append(f'<text x="{bx + bw * 0.35:.1f}" y="{base - h - 4:.1f}" text-anchor="middle">'
                   f'{escape(fmt(value, digits))}</text>')
        svg.append(f'<text x="{bx + bw * 0.35:.1f}" y="{base + 14:.1f}" text-anchor="middle">{escape(label)}</text>')
    if not math.isnan(target):
        ty = base - (base - top) * target / vmax
        svg.append(f'<line x1="{left}" y1="{ty:.1f}" x2="{x0 + PW - 20}" y2="{ty:.1f}" stroke="#c0392b" '
                   'stroke-dasharray="5,3"/>')
        svg.append(f'<text x="{x0 + PW - 22}" y="{ty - 4:.1f}" text-anchor="end" fill="#c0392b">'
                   f'{escape(target_label)}</text>')
svg.append(f'<text x="10" y="{H - 28}" fill="#444">1 worker: tlsgate\'s process CPU (utime + stime) per unit; '
           '+ loop: the same with the inspection loop; box: the box\'s CPU; floor: tls_floor, same run.</text>')
svg.append(f'<text x="10" y="{H - 12}" fill="#444">2 workers ÷ 1: over memif, the 1 worker\'s CPU ÷ the busier '
           'worker\'s; in memory (worker_scaling), units per CPU second of the busier thread.</text>')
svg.append("</svg>")
with open(svg_path, "w") as f:
    f.write("\n".join(svg) + "\n")
