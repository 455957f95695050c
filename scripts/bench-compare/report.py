#!/usr/bin/env python3
"""Tables and chart of scripts/bench-compare.sh from its per-run records.

  report.py DIR REQUESTS CONCURRENCY KA_REQUESTS BULK_MB LAT_REQUESTS SVG

DIR holds perf.kv and mem.kv (one record a line, space-separated key=value;
values use _ for spaces), the latency files lat-{new,ka}-PATH-RUN.txt
(curl -w "time_connect time_appconnect time_total num_connects http_code"),
and the in-memory rustls floor of each run, floor-RUN.json (the JSON of
crates/mitm/examples/tls_floor.rs --json) with floor.kv (run, other
processes' CPU and wall time while it ran).
Prints the Markdown tables; writes the chart to SVG.
"""
import json
import math
import re
import statistics
import sys
from html import escape

d, requests, conc, ka_requests, bulk_mb, lat_requests, svg_path = sys.argv[1:8]
requests, ka_requests, bulk_mb = int(requests), int(ka_requests), int(bulk_mb)

NAMES = {"a": "(a) no appliance: kernel bridge", "b": "(b) SSLsplit, transparent (bridge + REDIRECT)",
         "c": "(c) tlsgate, TLS interception"}
SHORT = {"a": "kernel bridge", "b": "SSLsplit", "c": "tlsgate"}
NAN = float("nan")


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


perf, mem = load("perf.kv"), load("mem.kv")


def num(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return NAN


def runs_of(rows, path):
    return [r for r in rows if r["path"] == path]


def med_of(values, total):
    vals = [v for v in values if not math.isnan(v)]
    if not vals or len(vals) * 2 <= total:
        return NAN  # a majority of runs failed
    return statistics.median(vals)


def med(rows, path, fn):
    rs = runs_of(rows, path)
    return med_of([fn(r) for r in rs], len(rs))


def per_run(rows, path, fn, digits):
    return " / ".join(fmt(fn(r), digits) for r in runs_of(rows, path))


def fmt(value, digits):
    return "-" if value is None or math.isnan(value) else f"{value:,.{digits}f}"


def ratio(x, y):
    return x / y if y and not math.isnan(x) and not math.isnan(y) and y > 0 else NAN


def field(key):
    return lambda r: num(r.get(key))


def per(key, units, scale):  # a CPU field per unit of work, scaled
    return lambda r: num(r.get(key)) / units * scale if units else NAN


def lat(kind, path, run):
    """p50 and p99 (ms) of time_total; new: every line one new connection;
    ka: the lines after the first (which pays the connection and handshake)."""
    try:
        with open(f"{d}/lat-{kind}-{path}-{run}.txt") as f:
            recs = [line.split() for line in f if line.strip()]
    except FileNotFoundError:
        return NAN, NAN, "missing", 0
    good = [r for r in recs if len(r) == 5 and r[4] == "200"]
    if kind == "new":
        ok = len(good) == int(lat_requests) and all(r[3] == "1" for r in good)
        times = [float(r[2]) * 1e3 for r in good]
    else:
        ok = len(good) == int(lat_requests) and all(r[3] == "0" for r in good[1:])
        times = [float(r[2]) * 1e3 for r in good[1:]]
    if not times:
        return NAN, NAN, "no samples", 0
    times.sort()
    def pct(p):
        return times[min(len(times) - 1, max(0, math.ceil(p / 100 * len(times)) - 1))]
    slow = sum(1 for t in times if t >= 1000)
    return (pct(50), pct(99), "ok" if ok else f"{len(good)} answered, connections reused or not as expected",
            slow)


P = [p for p in "abc" if runs_of(perf, p)]
out = []
w = out.append

# --- throughput and latency -------------------------------------------------------
rate = {p: med(perf, p, field("rate")) for p in P}
ka = {p: med(perf, p, field("ka")) for p in P}
bulk = {p: med(perf, p, field("mbps")) for p in P}
lat_stats = {}
for p in P:
    for kind in ("new", "ka"):
        vals = [lat(kind, p, r["run"]) for r in runs_of(perf, p)]
        lat_stats[p, kind] = (med_of([v[0] for v in vals], len(vals)), med_of([v[1] for v in vals], len(vals)),
                              " / ".join(f"{fmt(v[0], 2)}, {fmt(v[1], 2)}"
                                         + (f" ({v[3]} ≥ 1 s)" if v[3] else "") for v in vals),
                              [v[2] for v in vals if v[2] != "ok"])

w(f"| path | new connections (conn/s), `ab -n {requests} -c {conc}` | per run | kept-alive requests (req/s), "
  f"`ab -k -n {ka_requests} -c {conc}` | per run | bulk, one {bulk_mb} MB download (MB/s) | per run |")
w("|---|---:|---|---:|---|---:|---|")
for p in P:
    w(f"| {NAMES[p]} | {fmt(rate[p], 0)} | {per_run(perf, p, field('rate'), 0)} | {fmt(ka[p], 0)} | "
      f"{per_run(perf, p, field('ka'), 0)} | {fmt(bulk[p], 1)} | {per_run(perf, p, field('mbps'), 1)} |")
for x, y in (("c", "b"), ("b", "a"), ("c", "a")):
    if x in P and y in P:
        w(f"| ratio {x}/{y} | {fmt(ratio(rate[x], rate[y]), 2)} | | {fmt(ratio(ka[x], ka[y]), 2)} | | "
          f"{fmt(ratio(bulk[x], bulk[y]), 2)} | |")
w("")
w(f"Latency, {lat_requests} sequential requests with curl (one process, `-w %{{time_total}}`), ms: "
  "\"new connection\" = each request on its own new TCP connection with a full TLS handshake "
  "(`Connection: close`, `--no-sessionid`), from curl's connect() to the last byte of the response; "
  "\"kept-alive\" = the requests after the first on one connection. p50 and p99 per run, median over "
  "runs; \"added\" = minus (a); \"(N ≥ 1 s)\": requests that took a second or more (a lost SYN or "
  "SYN-ACK is retransmitted after 1 s).")
w("")
w("| path | new connection p50 | p99 | added p50 | added p99 | per run (p50, p99) | kept-alive p50 | p99 | "
  "added p50 | added p99 | per run (p50, p99) |")
w("|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---|")
for p in P:
    cells = []
    for kind in ("new", "ka"):
        p50, p99, runs_text, _ = lat_stats[p, kind]
        a50, a99 = (lat_stats["a", kind][:2] if "a" in P else (NAN, NAN))
        added = ("-", "-") if p == "a" else (fmt(p50 - a50, 2), fmt(p99 - a99, 2))
        cells += [fmt(p50, 2), fmt(p99, 2), added[0], added[1], runs_text]
    w(f"| {NAMES[p]} | " + " | ".join(cells) + " |")
bad_lat = [(p, kind, s) for (p, kind), v in lat_stats.items() for s in v[3]]
if bad_lat:
    w("")
    w("Latency runs not as expected: " + "; ".join(f"({p}) {kind}: {s}" for p, kind, s in bad_lat))

# --- CPU --------------------------------------------------------------------------
gb = bulk_mb / 1000
cpu = {}
for p in P:
    if p == "a":
        continue
    cpu[p] = {
        "conn_proc": med(perf, p, per("rate_cpu", requests, 1000)),
        "conn_busy": med(perf, p, per("rate_busy", requests, 1000)),
        "conn_cores": med(perf, p, lambda r: ratio(num(r.get("rate_cpu")), num(r.get("rate_wall")))),
        "ka_proc": med(perf, p, per("ka_cpu", ka_requests, 1e5)),
        "ka_busy": med(perf, p, per("ka_busy", ka_requests, 1e5)),
        "gb_proc": med(perf, p, per("bulk_cpu", gb, 1)),
        "gb_busy": med(perf, p, per("bulk_busy", gb, 1)),
        "gb_cores": med(perf, p, lambda r: ratio(num(r.get("bulk_cpu")), num(r.get("bulk_wall")))),
    }
w("")
w("Interceptor CPU: \"process\" = utime + stime of all its processes and threads from /proc/PID/stat, "
  "before and after the workload (the comparable figure for both); \"worker busy\" = tlsgate's worker busy "
  "time from its `--stats-interval` counters over the same window (±0.2 s; wall-clock, see below). Seconds of CPU per 1,000 new connections (the `ab -n` run), per "
  "100,000 kept-alive requests and per GB (10^9 bytes) of the bulk download; \"cores\" = process CPU / "
  "wall time of the workload.")
w("")
w("| interceptor | CPU s / 1,000 conns, process | worker busy | process cores during ab | per run (process) | "
  "CPU s / 100k kept-alive req, process | worker busy | CPU s / GB, process | worker busy | process cores during the download | per run (process) |")
w("|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---|")
for p in cpu:
    c = cpu[p]
    busy = lambda v: "-" if p == "b" else fmt(v, 2)
    w(f"| {NAMES[p]} | {fmt(c['conn_proc'], 2)} | {busy(c['conn_busy'])} | {fmt(c['conn_cores'], 2)} | "
      f"{per_run(perf, p, per('rate_cpu', requests, 1000), 2)} | {fmt(c['ka_proc'], 2)} | {busy(c['ka_busy'])} | "
      f"{fmt(c['gb_proc'], 2)} | {busy(c['gb_busy'])} | {fmt(c['gb_cores'], 2)} | "
      f"{per_run(perf, p, per('bulk_cpu', gb, 1), 2)} |")
if "b" in cpu and "c" in cpu:
    b, c = cpu["b"], cpu["c"]
    w(f"| ratio c/b, process CPU / process CPU | {fmt(ratio(c['conn_proc'], b['conn_proc']), 2)} | | | | "
      f"{fmt(ratio(c['ka_proc'], b['ka_proc']), 2)} | | {fmt(ratio(c['gb_proc'], b['gb_proc']), 2)} | | | |")
    w(f"| ratio c/b, tlsgate's worker busy / SSLsplit's process CPU | | {fmt(ratio(c['conn_busy'], b['conn_proc']), 2)} | | | "
      f"| {fmt(ratio(c['ka_busy'], b['ka_proc']), 2)} | | {fmt(ratio(c['gb_busy'], b['gb_proc']), 2)} | | |")
cpu_table_end = len(out)

# --- the rustls floor (crates/mitm/examples/tls_floor.rs, run before each (c) row) ---
# Per run: the two handshake roles tlsgate plays, with the client role
# weighted by the share of upstream legs that resumed in that run (from
# tlsgate's connection log, the "legs" field), and bare AES-256-GCM decrypt +
# encrypt per GB.
RESUMED = re.compile(r"upstream_leg_resumed_(\d+)_of_(\d+)")
floor_env = {r.get("run"): r for r in load("floor.kv")}


def load_floor(run):
    try:
        with open(f"{d}/floor-{run}.json") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def resumed_share(r):
    m = RESUMED.search(r.get("legs", ""))
    return int(m.group(1)) / int(m.group(2)) if m and int(m.group(2)) else NAN


def floor_conn(js, share):
    """CPU s per connection of the two handshakes; the full-handshake floor
    when the run's resumption share is unknown."""
    if not js:
        return NAN
    if math.isnan(share):
        return num(js.get("handshakes_cpu_s_per_connection"))
    return (num(js.get("server_role_cpu_s")) + share * num(js.get("client_role_resumed_cpu_s"))
            + (1 - share) * num(js.get("client_role_full_cpu_s")))


floor_runs = []  # (perf record of (c), floor JSON or None, resumed share)
if "c" in cpu:
    floor_runs = [(r, load_floor(r["run"]), resumed_share(r)) for r in runs_of(perf, "c")]
floor = {}
first = None
if floor_runs:
    n_floor = len(floor_runs)
    fmed = lambda fn: med_of([fn(js, share) for _, js, share in floor_runs], n_floor)
    fkey = lambda key, scale=1.0: (lambda js, share: num(js.get(key)) * scale if js else NAN)
    floor = {
        "conn": fmed(lambda js, share: floor_conn(js, share) * 1000),
        "conn_full": fmed(fkey("handshakes_cpu_s_per_connection", 1000)),
        "conn_resumed": fmed(fkey("handshakes_upstream_resumed_cpu_s_per_connection", 1000)),
        "server": fmed(fkey("server_role_cpu_s", 1e6)),
        "server_no_tickets": fmed(fkey("server_role_no_tickets_cpu_s", 1e6)),
        "client_full": fmed(fkey("client_role_full_cpu_s", 1e6)),
        "client_resumed": fmed(fkey("client_role_resumed_cpu_s", 1e6)),
        "gb": fmed(fkey("aead_cpu_s_per_gb")),
        "gb_128": fmed(fkey("aead_cpu_s_per_gb_aes_128_gcm")),
        "gb_rustls": fmed(fkey("aead_rustls_record_layer_cpu_s_per_gb_aes_256_gcm")),
    }
    c = cpu["c"]
    per_run_floor = lambda fn, digits: " / ".join(fmt(fn(js, share), digits) for _, js, share in floor_runs)
    # Rows of the interceptor CPU table above: the floor, and tlsgate against it.
    out.insert(cpu_table_end, f"| rustls floor, in memory (`tls_floor` example, same run): two handshakes / "
               f"AES-256-GCM decrypt + encrypt | {fmt(floor['conn'], 2)} | - | - | "
               f"{per_run_floor(lambda js, share: floor_conn(js, share) * 1000, 2)} | - | - | "
               f"{fmt(floor['gb'], 2)} | - | - | {per_run_floor(fkey('aead_cpu_s_per_gb'), 2)} |")
    out.insert(cpu_table_end + 1, f"| ratio c/floor, process CPU / floor | {fmt(ratio(c['conn_proc'], floor['conn']), 2)} "
               f"| | | | | | {fmt(ratio(c['gb_proc'], floor['gb']), 2)} | | | |")
    out.insert(cpu_table_end + 2, f"| ratio c/floor, tlsgate's worker busy / floor | | "
               f"{fmt(ratio(c['conn_busy'], floor['conn']), 2)} | | | | | | {fmt(ratio(c['gb_busy'], floor['gb']), 2)} | | |")
    shares = " / ".join("-" if math.isnan(share) else f"{share * 100:.0f} %" for _, _, share in floor_runs)
    first = next((js for _, js, _ in floor_runs if js), None)
if floor and first:
    w("")
    w("rustls floor: `crates/mitm/examples/tls_floor.rs` in memory, once per run right before tlsgate's "
      "row (after the wait for a quiet machine), one thread, its CPU time; only the appliance's roles are "
      "timed, plain rustls with ring and no TCP (medians over the runs of the example's medians). "
      f"Handshakes ({first.get('cipher_suite', '?')}, {first.get('kx_group', '?')}, "
      f"{first.get('certificates', '?')} certificates, as ab negotiates with tlsgate), µs per connection: "
      f"server role towards the client {fmt(floor['server'], 1)} (2 TLS 1.3 tickets issued, as tlsgate does; "
      f"{fmt(floor['server_no_tickets'], 1)} without), client role towards the origin "
      f"{fmt(floor['client_full'], 1)} full (chain verified against the origin's certificate), "
      f"{fmt(floor['client_resumed'], 1)} resumed with the origin's ticket. tlsgate's upstream legs "
      f"resumed in {shares} of the connections logged per run (its connection log), so the floor is the "
      f"server role plus the client role weighted by that share"
      + (" (the full client role where the run has no count)" if "-" in shares.split(" / ") else "")
      + f": {fmt(floor['conn'], 2)} CPU s / 1,000 "
      f"connections ({fmt(floor['conn_full'], 2)} if no upstream leg resumed, "
      f"{fmt(floor['conn_resumed'], 2)} if all did). Bulk: 16 KiB records opened and sealed again "
      f"in place with ring, per GB relayed (10^9 plaintext bytes decrypted once and encrypted once): "
      f"AES-256-GCM (negotiated) {fmt(floor['gb'], 3)} CPU s, the floor; AES-128-GCM "
      f"{fmt(floor['gb_128'], 3)}; AES-256-GCM through rustls' record layer {fmt(floor['gb_rustls'], 3)}.")

# --- whole-machine CPU (/proc/stat, every path) -------------------------------------
def machine(key, units, scale, less_other=False):
    """Whole-machine busy CPU of a workload per unit of work, scaled; less the
    other processes' CPU (othercpu.py) when asked."""
    def fn(r):
        used = num(r.get(f"{key}_machine"))
        if less_other:
            used -= num(r.get(f"{key}_other"))
        return used / units * scale if units else NAN
    return fn


MACHINE = [("conn", "rate", requests, 1000), ("ka", "ka", ka_requests, 1e5), ("gb", "bulk", gb, 1)]
mach = {p: {f"{name}{suffix}": med(perf, p, machine(key, units, scale, less))
            for name, key, units, scale in MACHINE for suffix, less in (("", False), ("_less", True))}
        for p in P if any("rate_machine" in r for r in runs_of(perf, p))}
if mach:
    w("")
    w("Whole-machine CPU: all CPUs' busy time from /proc/stat (user + nice + system + irq + softirq + "
      "steal) over the same windows, whoever it is charged to: client, origin, interceptor, kernel threads "
      "and softirq, and other processes of the shared machine; \"less other processes\" takes out the CPU "
      "of the processes outside the benchmark (see the conditions below). Per 1,000 new connections, per "
      "100,000 kept-alive requests and per GB of the bulk download. \"added by the interceptor\" = the "
      "path's figure less other processes minus the same for (a).")
    w("")
    w("| path | CPU s / 1,000 conns, whole machine | less other processes | per run (whole machine) | "
      "CPU s / 100k kept-alive req, whole machine | less other processes | CPU s / GB, whole machine | "
      "less other processes | per run (whole machine) |")
    w("|---|---:|---:|---|---:|---:|---:|---:|---|")
    for p in mach:
        m = mach[p]
        w(f"| {NAMES[p]} | {fmt(m['conn'], 2)} | {fmt(m['conn_less'], 2)} | "
          f"{per_run(perf, p, machine('rate', requests, 1000), 2)} | {fmt(m['ka'], 2)} | {fmt(m['ka_less'], 2)} | "
          f"{fmt(m['gb'], 2)} | {fmt(m['gb_less'], 2)} | {per_run(perf, p, machine('bulk', gb, 1), 2)} |")
    if "a" in mach:
        for p in (q for q in "bc" if q in mach):
            added = {k: mach[p][f"{k}_less"] - mach["a"][f"{k}_less"] for k in ("conn", "ka", "gb")}
            mach[p].update({f"{k}_added": v for k, v in added.items()})
            w(f"| added by the interceptor ({p}) − (a), less other processes | | {fmt(added['conn'], 2)} | | "
              f"| {fmt(added['ka'], 2)} | | {fmt(added['gb'], 2)} | |")
    if "b" in mach and "c" in mach:
        b, c = mach["b"], mach["c"]
        w(f"| ratio c/b | {fmt(ratio(c['conn'], b['conn']), 2)} | "
          f"{fmt(ratio(c['conn_less'], b['conn_less']), 2)} | | {fmt(ratio(c['ka'], b['ka']), 2)} | "
          f"{fmt(ratio(c['ka_less'], b['ka_less']), 2)} | {fmt(ratio(c['gb'], b['gb']), 2)} | "
          f"{fmt(ratio(c['gb_less'], b['gb_less']), 2)} | |")
        if "conn_added" in c and "conn_added" in b:
            w(f"| ratio c/b, added by the interceptor | | {fmt(ratio(c['conn_added'], b['conn_added']), 2)} | | "
              f"| {fmt(ratio(c['ka_added'], b['ka_added']), 2)} | | {fmt(ratio(c['gb_added'], b['gb_added']), 2)} | |")

# --- memory -----------------------------------------------------------------------
M = [p for p in "bc" if runs_of(mem, p)]
memx = {}
if M:
    w("")
    w("Memory per idle intercepted connection: K connections held open through the interceptor by "
      "`scripts/bench-compare/hold.py` (TLS handshake, one keep-alive request and its response, then idle), "
      "on a freshly started interceptor. RSS = VmRSS of all the interceptor's processes before the "
      "connections and with all K open; per connection = the difference / K. Kernel sockets = TCP sockets "
      "in use in the interceptor's namespace (/proc/net/sockstat `inuse`) per connection.")
    w("")
    w("| interceptor | K held (alive at measurement) | RSS before (MiB) | RSS with K (MiB) | RSS per connection (KiB) | "
      "per run (KiB) | kernel sockets per connection | tlsgate's report while held: `rss_bytes` (MiB) | "
      "`tcp.socket_buffer_bytes` per connection (KiB) | `tcp.tls_sessions_live` |")
    w("|---|---|---:|---:|---:|---|---:|---:|---:|---|")
    for p in M:
        rs = runs_of(mem, p)
        per_conn = lambda r: (num(r.get("rss1")) - num(r.get("rss0"))) / num(r.get("k")) / 1024
        memx[p] = med(mem, p, per_conn)
        held = " / ".join(f"{r.get('ready', '?')} ({r.get('alive', '?')})" for r in rs)
        socks = med(mem, p, lambda r: (num(r.get("inuse1")) - num(r.get("inuse0"))) / num(r.get("k")))
        rep = lambda key, scale: med(mem, p, lambda r: num(r.get(key)) / scale)
        if p == "c":
            live_rss = fmt(rep("live_rss", 2 ** 20), 1)
            rep_buf = fmt(med(mem, p, lambda r: num(r.get("rep_sockbuf")) / num(r.get("k")) / 1024), 1)
            rep_tls = " / ".join(r.get("rep_tls_live", "?") for r in rs)
        else:
            live_rss = rep_buf = rep_tls = "-"
        w(f"| {NAMES[p]} | {held} | {fmt(rep('rss0', 2 ** 20), 1)} | {fmt(rep('rss1', 2 ** 20), 1)} | "
          f"{fmt(memx[p], 1)} | {per_run(mem, p, per_conn, 1)} | {fmt(socks, 2)} | {live_rss} | "
          f"{rep_buf} | {rep_tls} |")
    if "b" in memx and "c" in memx:
        w(f"| ratio c/b | | | | {fmt(ratio(memx['c'], memx['b']), 2)} | | | | | |")

# --- targets ----------------------------------------------------------------------
if "b" in P and "c" in P:
    def verdict(value, target, higher):
        if math.isnan(value):
            return "not measured"
        return "**met**" if (value >= target if higher else value <= target) else "**not met**"
    b, c = cpu["b"], cpu["c"]
    rows = [
        ("new intercepted connections per second ≥ 3 × SSLsplit's", ratio(rate["c"], rate["b"]), 3, True, "c/b conn/s"),
        ("appliance CPU per intercepted connection ≤ 0.4 × SSLsplit's",
         ratio(c["conn_proc"], b["conn_proc"]), 0.4, False, "process CPU / process CPU"),
        ("(the same with tlsgate's worker busy time instead)",
         ratio(c["conn_busy"], b["conn_proc"]), 0.4, False, "worker busy / SSLsplit process CPU"),
        ("bulk throughput ≥ 1.3 × SSLsplit's", ratio(bulk["c"], bulk["b"]), 1.3, True, "c/b MB/s"),
        ("CPU per GB ≤ 0.5 × SSLsplit's", ratio(c["gb_proc"], b["gb_proc"]), 0.5, False,
         "process CPU / process CPU"),
        ("(the same with tlsgate's worker busy time instead)", ratio(c["gb_busy"], b["gb_proc"]), 0.5, False,
         "worker busy / SSLsplit process CPU"),
    ]
    if "b" in mach and "c" in mach:
        mb, mc = mach["b"], mach["c"]
        rows[3:3] = [("(appliance CPU per connection, whole machine)", ratio(mc["conn"], mb["conn"]), 0.4, False,
                      "whole-machine CPU / whole-machine CPU")]
        rows.append(("(CPU per GB, whole machine)", ratio(mc["gb"], mb["gb"]), 0.5, False,
                     "whole-machine CPU / whole-machine CPU"))
    w("")
    w("Issue 6's targets against SSLsplit, from the medians above:")
    w("")
    w("| target | measured | ratio | verdict |")
    w("|---|---|---:|---|")
    for text, value, target, higher, how in rows:
        w(f"| {text} | {how} | {fmt(value, 2)} | {verdict(value, target, higher)} |")
    mb, mc = mach.get("b", {}), mach.get("c", {})
    rows17 = [
        ("new connections per second ≥ 3 × SSLsplit's", ratio(rate["c"], rate["b"]), 3, True, "c/b conn/s"),
        ("kept-alive requests per second ≥ 2 × SSLsplit's", ratio(ka["c"], ka["b"]), 2, True, "c/b req/s"),
        ("LAN bulk ≥ 1.5 × SSLsplit's", ratio(bulk["c"], bulk["b"]), 1.5, True, "c/b MB/s"),
        ("CPU per GB ≤ 0.6 × SSLsplit's, process", ratio(c["gb_proc"], b["gb_proc"]), 0.6, False,
         "process CPU / process CPU"),
        ("CPU per GB ≤ 0.6 × SSLsplit's, whole machine", ratio(mc.get("gb", NAN), mb.get("gb", NAN)), 0.6, False,
         "whole-machine CPU / whole-machine CPU"),
    ]
    w("")
    w("Issue 17's targets against SSLsplit, from the same medians:")
    w("")
    w("| target | measured | ratio | verdict |")
    w("|---|---|---:|---|")
    for text, value, target, higher, how in rows17:
        w(f"| {text} | {how} | {fmt(value, 2)} | {verdict(value, target, higher)} |")
if floor:
    def verdict_le(value, target):
        return "not measured" if math.isnan(value) else ("**met**" if value <= target else "**not met**")
    c = cpu["c"]
    floor_rows = [
        ("appliance CPU per intercepted connection ≤ 1.3 × the two rustls handshakes it must do",
         "process CPU / handshake floor", ratio(c["conn_proc"], floor["conn"]), 1.3),
        ("(the same with tlsgate's worker busy time instead)", "worker busy / handshake floor",
         ratio(c["conn_busy"], floor["conn"]), 1.3),
        ("CPU per GB relayed ≤ 1.5 × the bare AEAD decrypt + encrypt", "process CPU / AES-256-GCM floor",
         ratio(c["gb_proc"], floor["gb"]), 1.5),
        ("(the same with tlsgate's worker busy time instead)", "worker busy / AES-256-GCM floor",
         ratio(c["gb_busy"], floor["gb"]), 1.5),
    ]
    w("")
    w(f"Issue 6's targets against the rustls floor measured in memory in the same run "
      f"(handshakes {fmt(floor['conn'], 2)} CPU s / 1,000 connections, AEAD {fmt(floor['gb'], 3)} CPU s / GB), "
      "from the medians above:")
    w("")
    w("| target | measured | ratio | verdict |")
    w("|---|---|---:|---|")
    for text, how, value, target in floor_rows:
        w(f"| {text} | {how} | {fmt(value, 2)} | {verdict_le(value, target)} |")

# --- conditions -------------------------------------------------------------------
w("")
w("Per run, validity and conditions:")
w("")
for p in P:
    cells = []
    for r in runs_of(perf, p):
        other = " / ".join(fmt(ratio(num(r.get(f"{k}_other")), num(r.get(f"{k}_wall"))), 2)
                           for k in ("rate", "ka", "bulk"))
        icpt = "" if p == "a" else f", intercepted {r.get('intercepted', '?')}"
        if p == "b":
            icpt += (f" (SYNs redirected {r.get('redirected', '?')}, stray segments redirected "
                     f"{r.get('pickups', '?')}, SYNs bridged past SSLsplit {r.get('bypassed', '?')})")
        cells.append(f"run {r['run']}: client connections {r.get('conns', '?')}{icpt}, forged-CA check "
                     f"{r.get('issuer', '?')}, sha {r.get('sha', '-')}, other processes' CPU during ab / ab -k / "
                     f"bulk {other} cores; {r.get('valid', '?').replace('_', ' ')}")
    w(f"- ({p}) " + "; ".join(cells))
    first = runs_of(perf, p)[0] if runs_of(perf, p) else {}
    w(f"  - run 1: ab's TLS {first.get('proto', '?').replace('_', ' ')}, server temp key "
      f"{first.get('tempkey', '?').replace('_', ' ')}"
      + ("" if first.get("legs", "-") == "-" else f"; legs of the connections (interceptor's log): "
         f"{first['legs'].replace('_', ' ')}"))
if floor_runs:
    cells = []
    for r, js, _ in floor_runs:
        env = floor_env.get(r["run"], {})
        if js:
            cells.append(f"run {r['run']}: {fmt(num(js.get('elapsed_s')), 1)} s, CPU / wall of the timed parts "
                         f"{fmt(num(js.get('cpu_over_wall')), 2)}, other processes' CPU "
                         f"{fmt(ratio(num(env.get('other')), num(env.get('wall'))), 2)} cores")
        else:
            cells.append(f"run {r['run']}: not measured")
    w("- rustls floor " + "; ".join(cells))
for p in M:
    cells = [f"run {r['run']}: {r.get('valid', '?').replace('_', ' ')}, other processes' CPU while holding "
             f"{fmt(ratio(num(r.get('other')), num(r.get('wall'))), 2)} cores" for r in runs_of(mem, p)]
    w(f"- memory ({p}) " + "; ".join(cells))

print("\n".join(out))

# --- chart ------------------------------------------------------------------------
COLORS = {"a": "#9e9e9e", "b": "#e08a2c", "b2": "#e08a2c", "c": "#2c6fb7", "c2": "#8db4e2"}
panels = [
    ("New HTTPS connections/s", "conn/s", [(p, SHORT[p], rate[p]) for p in P], 0),
    ("Kept-alive requests/s", "req/s", [(p, SHORT[p], ka[p]) for p in P], 0),
    (f"Bulk download, {bulk_mb} MB", "MB/s", [(p, SHORT[p], bulk[p]) for p in P], 0),
    ("Latency p50, new connection", "ms", [(p, SHORT[p], lat_stats[p, "new"][0]) for p in P], 2),
]
if cpu:
    panels.append(("Interceptor CPU per 1,000 conns", "CPU s", [
        ("b", "SSLsplit", cpu.get("b", {}).get("conn_proc", NAN)),
        ("c", "tlsgate", cpu.get("c", {}).get("conn_proc", NAN)),
        ("c2", "tlsgate busy*", cpu.get("c", {}).get("conn_busy", NAN))], 2))
    panels.append(("Interceptor CPU per GB", "CPU s", [
        ("b", "SSLsplit", cpu.get("b", {}).get("gb_proc", NAN)),
        ("c", "tlsgate", cpu.get("c", {}).get("gb_proc", NAN)),
        ("c2", "tlsgate busy*", cpu.get("c", {}).get("gb_busy", NAN))], 2))
if mach:
    panels.append(("Whole-machine CPU per 1,000 conns", "CPU s",
                   [(p, SHORT[p], mach[p]["conn"]) for p in mach], 2))
    panels.append(("Whole-machine CPU per GB", "CPU s", [(p, SHORT[p], mach[p]["gb"]) for p in mach], 2))
if memx:
    panels.append(("RSS per idle connection", "KiB", [(p, SHORT[p], memx.get(p, NAN)) for p in M], 1))

PW, PH, COLS = 300, 230, 4
rows_n = math.ceil(len(panels) / COLS)
W, H = PW * COLS, PH * rows_n + 60
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
       'font-family="DejaVu Sans, Arial, sans-serif" font-size="11">',
       f'<rect width="{W}" height="{H}" fill="white"/>',
       f'<text x="{W / 2}" y="22" text-anchor="middle" font-size="15" font-weight="bold">'
       'tlsgate vs SSLsplit vs no appliance (medians; scripts/bench-compare.sh)</text>']
for i, (title, unit, bars, digits) in enumerate(panels):
    x0, y0 = (i % COLS) * PW, 40 + (i // COLS) * PH
    svg.append(f'<text x="{x0 + PW / 2}" y="{y0 + 14}" text-anchor="middle" font-weight="bold">{escape(title)}</text>')
    base, top, left = y0 + PH - 40, y0 + 34, x0 + 30
    vals = [v for _, _, v in bars if not math.isnan(v)]
    vmax = max(vals) if vals else 1
    vmax = vmax if vmax > 0 else 1
    bw = (PW - 60) / max(len(bars), 1)
    svg.append(f'<line x1="{left}" y1="{base}" x2="{x0 + PW - 20}" y2="{base}" stroke="#444"/>')
    svg.append(f'<text x="{x0 + 8}" y="{top - 10}" fill="#666">{escape(unit)}</text>')
    for j, (key, label, v) in enumerate(bars):
        bx = left + j * bw + bw * 0.15
        h = 0 if math.isnan(v) else (base - top - 12) * v / vmax
        svg.append(f'<rect x="{bx:.1f}" y="{base - h:.1f}" width="{bw * 0.7:.1f}" height="{h:.1f}" fill="{COLORS[key]}"/>')
        svg.append(f'<text x="{bx + bw * 0.35:.1f}" y="{base - h - 4:.1f}" text-anchor="middle">'
                   f'{escape(fmt(v, digits) if not math.isnan(v) else "n/a")}</text>')
        svg.append(f'<text x="{bx + bw * 0.35:.1f}" y="{base + 14:.1f}" text-anchor="middle">{escape(label)}</text>')
svg.append(f'<text x="10" y="{H - 12}" fill="#444">CPU: utime + stime of the interceptor\'s processes '
           '(/proc/PID/stat); *tlsgate busy = wall-clock time of its worker\'s polls that received frames '
           '(includes time preempted). Memory: VmRSS growth per idle connection.</text>')
if mach:
    svg.append(f'<text x="10" y="{H - 28}" fill="#444">Whole machine: all CPUs\' busy time from /proc/stat '
               '(every process, kernel thread and softirq), whoever it is charged to.</text>')
svg.append("</svg>")
with open(svg_path, "w") as f:
    f.write("\n".join(svg) + "\n")
