#!/usr/bin/env python3
"""bench-wan.sh's tables, verdicts and chart from a run's records.

  report.py DIR MB SVG

DIR/points.kv: one line per download, "key=value" words: rtt (ms), loss (%),
path (direct|sslsplit|tlsgate), run, status (ok|timeout|failed|corrupt),
bytes, seconds. DIR/extra.kv (optional): element_plain, element_through
(MB/s), idle_kib, idle_n, idle_valid. Prints the Markdown of the results
(grid, ratios, targets) and writes the SVG chart.
"""
import collections
import statistics
import sys

PATHS = [("direct", "direct (kernel bridge)"), ("sslsplit", "SSLsplit"), ("tlsgate", "tlsgate")]
COLOURS = {"direct": "#8c8c8c", "sslsplit": "#4e79a7", "tlsgate": "#e15759"}


def read_kv(path):
    rows = []
    try:
        for line in open(path):
            if line.strip():
                rows.append(dict(w.split("=", 1) for w in line.split()))
    except FileNotFoundError:
        pass
    return rows


def main():
    run_dir, mb, svg_path = sys.argv[1], float(sys.argv[2]), sys.argv[3]
    points = read_kv(f"{run_dir}/points.kv")
    extra = {}
    for row in read_kv(f"{run_dir}/extra.kv"):
        extra.update(row)
    # (rtt, loss, path) -> list of (status, MB/s)
    cells = collections.defaultdict(list)
    for p in points:
        secs = float(p["seconds"])
        rate = int(p["bytes"]) / secs / 1e6 if secs > 0 else 0.0
        cells[(int(p["rtt"]), p["loss"], p["path"])].append((p["status"], rate))
    rtts = sorted({k[0] for k in cells})
    losses = sorted({k[1] for k in cells}, key=float)
    paths = [(p, name) for p, name in PATHS if any(k[2] == p for k in cells)]

    def median(key):
        """Median MB/s over the runs, and whether every run completed byte-exact."""
        runs = cells.get(key)
        if not runs:
            return None, False
        return statistics.median(r for _, r in runs), all(s == "ok" for s, _ in runs)

    def cell(key):
        runs = cells.get(key)
        if not runs:
            return "-"
        rate, ok = median(key)
        text = f"{rate:.2f}"
        if not ok:
            bad = [s for s, _ in runs if s != "ok"]
            text += f" ({', '.join(sorted(set(bad)))} in {len(bad)} of {len(runs)})"
        if len(runs) > 1:
            text += " [" + " / ".join(f"{r:.2f}" for _, r in runs) + "]"
        return text

    def ratio(key_a, key_b):
        a, ok_a = median(key_a)
        b, ok_b = median(key_b)
        if a is None or b is None or b == 0:
            return None
        return a / b

    out = []
    w = out.append
    w(f"One {mb:g} MB HTTPS download per cell (MB = 10^6 B; MB/s = bytes received / curl's total time,")
    w("connection and TLS included; median of the runs, each run's figure in brackets when more")
    w("than one). A cell marked timeout did not finish within the download limit: its figure is")
    w("the bytes received by then over the limit, and it counts as a failure.")
    w("")
    header = "| RTT | loss | " + " | ".join(name + " (MB/s)" for _, name in paths)
    header += " | tlsgate / SSLsplit | SSLsplit / direct |"
    w(header)
    w("|---:|---:|" + "---:|" * len(paths) + "---:|---:|")
    for loss in losses:
        for rtt in rtts:
            row = f"| {rtt} ms | {loss} % | " + " | ".join(cell((rtt, loss, p)) for p, _ in paths)
            r1 = ratio((rtt, loss, "tlsgate"), (rtt, loss, "sslsplit"))
            r2 = ratio((rtt, loss, "sslsplit"), (rtt, loss, "direct"))
            row += f" | {'-' if r1 is None else f'{r1:.2f}'} | {'-' if r2 is None else f'{r2:.2f}'} |"
            w(row)
    w("")
    if any("retrans" in p for p in points):
        # The origin's kernel sends every download into the impaired link, whatever the path:
        # what it had to send again shows how well the receiving leg reported what arrived.
        retrans = collections.defaultdict(list)
        for p in points:
            if "retrans" in p:
                retrans[(int(p["rtt"]), p["loss"], p["path"])].append((int(p["retrans"]), int(p["rto"])))
        w("The origin's TCP during each download (its namespace's `RetransSegs` and `TCPTimeouts`):")
        w(f"segments it sent again (of about {mb * 1e6 / 1448:,.0f} for the file), and its retransmission")
        w("timeouts in brackets; summed over the runs.")
        w("")
        w("| RTT | loss | " + " | ".join(name for _, name in paths) + " |")
        w("|---:|---:|" + "---:|" * len(paths))
        for loss in losses:
            if float(loss) == 0:
                continue
            for rtt in rtts:
                row = [f"{sum(r for r, _ in retrans[(rtt, loss, p)]):,} ({sum(t for _, t in retrans[(rtt, loss, p)])})"
                       if retrans.get((rtt, loss, p)) else "-" for p, _ in paths]
                w(f"| {rtt} ms | {loss} % | " + " | ".join(row) + " |")
        w("")

    # Issue 13's targets.
    def verdict(value, target):
        if value is None:
            return "not measured", "-"
        return ("**met**" if value >= target else "**not met**"), f"{value:.2f}"

    w("Issue 13's targets, from this run:")
    w("")
    w("| target | measured | value | verdict |")
    w("|---|---|---:|---|")
    for rtt in (50, 150):
        v, text = verdict(ratio((rtt, "0", "tlsgate"), (rtt, "0", "sslsplit")), 0.9)
        w(f"| single download at {rtt} ms RTT ≥ 0.9 × SSLsplit | tlsgate / SSLsplit, {rtt} ms, no loss | {text} | {v} |")
    v, text = verdict(ratio((50, "1", "tlsgate"), (50, "1", "sslsplit")), 0.7)
    w(f"| single download at 1 % loss, 50 ms ≥ 0.7 × SSLsplit | tlsgate / SSLsplit, 50 ms, 1 % | {text} | {v} |")
    v, text = verdict(ratio((0, "0", "tlsgate"), (0, "0", "sslsplit")), 0.88)
    w(f"| LAN bulk not below 0.88 × SSLsplit | tlsgate / SSLsplit, 0 ms, no loss (element in the path) | {text} | {v} |")
    if "idle_kib" in extra:
        kib = float(extra["idle_kib"])
        ok = extra.get("idle_valid") == "yes" and kib <= 16
        w(f"| idle intercepted connection at the defaults ≤ 16 KiB | tlsgate's RSS growth / {int(extra['idle_n']):,} idle connections"
          f"{'' if extra.get('idle_valid') == 'yes' else ' (row invalid)'} | {kib:.1f} KiB | {'**met**' if ok else '**not met**'} |")
    if "element_through" in extra:
        through = float(extra["element_through"])
        w(f"| impairment element not the bottleneck below 300 MB/s | kernel TCP through the element, no impairment | {through:.0f} MB/s "
          f"| {'**met**' if through >= 300 else '**not met**'} |")
    w("")
    print("\n".join(out))
    write_svg(svg_path, cells, rtts, losses, paths, median, mb)


def write_svg(path, cells, rtts, losses, paths, median, mb):
    """One panel per loss rate: MB/s (log scale) per RTT, a bar per path."""
    import math
    panel_w, panel_h, top, left, bottom = 300, 260, 50, 60, 50
    width = left + len(losses) * (panel_w + 20) + 10
    height = top + panel_h + bottom + 20
    rates = [median(k)[0] for k in cells if median(k)[0]]
    lo = 10 ** math.floor(math.log10(max(min(rates), 1e-3))) if rates else 0.01
    hi = 10 ** math.ceil(math.log10(max(rates))) if rates else 1000

    def y_of(v):
        v = max(v, lo)
        return top + panel_h - (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo)) * panel_h

    s = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">',
         f'<rect width="{width}" height="{height}" fill="white"/>',
         f'<text x="{width / 2}" y="18" text-anchor="middle" font-size="14">One {mb:g} MB HTTPS download: MB/s by round trip and loss (log scale)</text>']
    for i, (p, name) in enumerate(paths):
        x = left + i * 170
        s.append(f'<rect x="{x}" y="28" width="10" height="10" fill="{COLOURS[p]}"/><text x="{x + 14}" y="37">{name}</text>')
    for pi, loss in enumerate(losses):
        x0 = left + pi * (panel_w + 20)
        s.append(f'<rect x="{x0}" y="{top}" width="{panel_w}" height="{panel_h}" fill="none" stroke="#999"/>')
        s.append(f'<text x="{x0 + panel_w / 2}" y="{top + panel_h + 38}" text-anchor="middle">loss {loss} % each way</text>')
        decade = lo
        while decade <= hi * 1.001:
            y = y_of(decade)
            s.append(f'<line x1="{x0}" x2="{x0 + panel_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>')
            if pi == 0:
                s.append(f'<text x="{x0 - 4}" y="{y + 4:.1f}" text-anchor="end">{decade:g}</text>')
            decade *= 10
        group_w = panel_w / len(rtts)
        bar_w = (group_w - 12) / max(len(paths), 1)
        for ri, rtt in enumerate(rtts):
            gx = x0 + ri * group_w + 6
            s.append(f'<text x="{gx + (group_w - 12) / 2:.1f}" y="{top + panel_h + 16}" text-anchor="middle">{rtt} ms</text>')
            for bi, (p, _) in enumerate(paths):
                rate, ok = median((rtt, loss, p))
                if rate is None:
                    continue
                y = y_of(rate)
                fill = COLOURS[p] if ok else "none"
                s.append(f'<rect x="{gx + bi * bar_w:.1f}" y="{y:.1f}" width="{bar_w - 1:.1f}" height="{top + panel_h - y:.1f}" '
                         f'fill="{fill}" stroke="{COLOURS[p]}"><title>{p} {rtt} ms {loss} %: {rate:.2f} MB/s'
                         f'{"" if ok else " (not complete)"}</title></rect>')
    s.append(f'<text x="14" y="{top + panel_h / 2}" transform="rotate(-90 14 {top + panel_h / 2})" text-anchor="middle">MB/s</text>')
    s.append(f'<text x="{width - 10}" y="{height - 6}" text-anchor="end" fill="#666">hollow bar: did not complete within the limit</text>')
    s.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(s) + "\n")


if __name__ == "__main__":
    main()
