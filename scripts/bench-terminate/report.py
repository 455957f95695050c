#!/usr/bin/env python3
"""bench-terminate.sh's tables and chart from a run's records.

  report.py RESULTS REQUESTS CONCURRENCY BULK_MB SVG

RESULTS: one line per run and path, "key=value" words: path
(tlsgate|hitch|stunnel|nginx), run, rate (conn/s or "failed"), bulk (MB/s or
"failed"), rate_term / rate_backend (CPU s of the terminator / the backend
nginx during ab), bulk_term / bulk_backend (the same during the download),
sha. Prints the Markdown of the results (medians, per run, ratios of tlsgate
to each baseline) and writes the SVG chart.
"""
import math
import statistics
import sys
from html import escape

PATHS = [
    ("tlsgate", "tlsgate [[service]]"),
    ("hitch", "hitch (PROXY v2)"),
    ("stunnel", "stunnel4 (PROXY v1)"),
    ("nginx", "nginx's own TLS"),
]
COLOURS = {"tlsgate": "#e15759", "hitch": "#4e79a7", "stunnel": "#59a14f", "nginx": "#8c8c8c"}
NAN = float("nan")


def num(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return NAN


def fmt(value, digits):
    return "-" if math.isnan(value) else f"{value:,.{digits}f}"


def main():
    results, requests, concurrency, bulk_mb, svg_path = sys.argv[1:6]
    requests, bulk_gb = int(requests), int(bulk_mb) / 1000
    rows = [dict(w.split("=", 1) for w in line.split()) for line in open(results) if line.strip()]
    paths = [(p, name) for p, name in PATHS if any(r["path"] == p for r in rows)]

    def runs(path):
        return [r for r in rows if r["path"] == path]

    def metric(row, key):
        """A row's value of `key`, derived metrics included."""
        if key == "conn_cpu":  # terminator + backend CPU s per 1,000 terminations
            return (num(row["rate_term"]) + num(row["rate_backend"])) * 1000 / requests
        if key == "term_conn_cpu":
            return num(row["rate_term"]) * 1000 / requests if row["path"] != "nginx" else NAN
        if key == "gb_cpu":  # terminator + backend CPU s per GB
            return (num(row["bulk_term"]) + num(row["bulk_backend"])) / bulk_gb
        if key == "term_gb_cpu":
            return num(row["bulk_term"]) / bulk_gb if row["path"] != "nginx" else NAN
        return num(row[key])

    def median(path, key):
        values = [metric(r, key) for r in runs(path)]
        good = [v for v in values if not math.isnan(v)]
        return statistics.median(good) if good and len(good) * 2 > len(values) else NAN

    def per_run(path, key, digits):
        return " / ".join(fmt(metric(r, key), digits) for r in runs(path))

    print(f"| path | terminations/s (ab -n {requests} -c {concurrency}) | per run | bulk {bulk_mb} MB (MB/s) "
          "| per run | CPU s per 1,000 terminations: terminator | terminator + backend "
          "| CPU s per GB: terminator | terminator + backend |")
    print("|---|---:|---|---:|---|---:|---:|---:|---:|")
    for p, name in paths:
        print(f"| {name} | {fmt(median(p, 'rate'), 0)} | {per_run(p, 'rate', 0)} | {fmt(median(p, 'bulk'), 1)} "
              f"| {per_run(p, 'bulk', 1)} | {fmt(median(p, 'term_conn_cpu'), 2)} | {fmt(median(p, 'conn_cpu'), 2)} "
              f"| {fmt(median(p, 'term_gb_cpu'), 2)} | {fmt(median(p, 'gb_cpu'), 2)} |")
    if any(p == "tlsgate" for p, _ in paths):
        print()
        print("Ratios of tlsgate to each baseline (medians; above 1 = tlsgate does more per second, "
              "or spends more CPU per unit of work):")
        print()
        print("| tlsgate / | terminations/s | bulk MB/s | CPU per termination (terminator + backend) "
              "| CPU per GB (terminator + backend) |")
        print("|---|---:|---:|---:|---:|")
        for p, name in paths:
            if p == "tlsgate":
                continue
            cells = []
            for key in ("rate", "bulk", "conn_cpu", "gb_cpu"):
                base = median(p, key)
                cells.append(fmt(median("tlsgate", key) / base if base > 0 else NAN, 2))
            print(f"| {name} | " + " | ".join(cells) + " |")
    write_svg(svg_path, paths, median, bulk_mb)


def write_svg(path, paths, median, bulk_mb):
    panels = [
        ("Terminations per second", "conn/s", "rate", 0),
        (f"Bulk download, {bulk_mb} MB", "MB/s", "bulk", 1),
        ("CPU per 1,000 terminations", "CPU s (terminator + backend)", "conn_cpu", 2),
        ("CPU per GB", "CPU s (terminator + backend)", "gb_cpu", 2),
    ]
    pw, ph = 300, 240
    width, height = pw * len(panels), ph + 70
    s = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
         'font-family="DejaVu Sans, Arial, sans-serif" font-size="11">',
         f'<rect width="{width}" height="{height}" fill="white"/>',
         f'<text x="{width / 2}" y="22" text-anchor="middle" font-size="15" font-weight="bold">'
         'TLS termination: tlsgate vs hitch, stunnel4, nginx (medians; scripts/bench-terminate.sh)</text>']
    for i, (title, unit, key, digits) in enumerate(panels):
        x0, y0 = i * pw, 40
        s.append(f'<text x="{x0 + pw / 2}" y="{y0 + 14}" text-anchor="middle" font-weight="bold">{escape(title)}</text>')
        base, top, left = y0 + ph - 40, y0 + 34, x0 + 30
        values = [(p, name, median(p, key)) for p, name in paths]
        vmax = max([v for _, _, v in values if not math.isnan(v)] or [1]) or 1
        bw = (pw - 60) / max(len(values), 1)
        s.append(f'<line x1="{left}" y1="{base}" x2="{x0 + pw - 20}" y2="{base}" stroke="#444"/>')
        s.append(f'<text x="{x0 + 8}" y="{top - 10}" fill="#666">{escape(unit)}</text>')
        for j, (p, name, v) in enumerate(values):
            bx = left + j * bw + bw * 0.15
            h = 0 if math.isnan(v) else (base - top - 12) * v / vmax
            s.append(f'<rect x="{bx:.1f}" y="{base - h:.1f}" width="{bw * 0.7:.1f}" height="{h:.1f}" fill="{COLOURS[p]}"/>')
            s.append(f'<text x="{bx + bw * 0.35:.1f}" y="{base - h - 4:.1f}" text-anchor="middle">'
                     f'{escape(fmt(v, digits) if not math.isnan(v) else "n/a")}</text>')
            s.append(f'<text x="{bx + bw * 0.35:.1f}" y="{base + 14:.1f}" text-anchor="middle">{escape(p)}</text>')
    s.append(f'<text x="10" y="{height - 12}" fill="#444">CPU: utime + stime (/proc/PID/stat) of the terminator '
             'and of the backend nginx; for "nginx" the server terminates its own TLS.</text>')
    s.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(s) + "\n")


main()
