#!/usr/bin/env bash
# scripts/bench-inspect.sh — the cost of tlsgate's inspection loop in the
# namespace lab: intercepted HTTPS with and without the plaintext going through
# an inspection box, as ratios, in one run.
#
# Usage: scripts/bench-inspect.sh [--write-doc] [--runs N] [--requests N]
#                                 [--concurrency N] [--bulk-mb N] [--paths LIST]
#                                 [--keep]   (root)
#   --runs: alternating runs per path, the table shows medians (default 3).
#   --requests/--concurrency: ab -n/-c (default 2000/20).
#   --bulk-mb: size of the bulk file in MB (10^6 bytes, default 200).
#   --paths: which of a, c, d, e to run (default acde; c is needed for ratios).
#   --keep: keep the temp dir (tlsgate logs, JSON reports, connection logs, ab
#   and curl output, the box's files).
#   --write-doc: (re)write the section between <!-- bench-inspect:begin --> and
#   <!-- bench-inspect:end --> of docs/BENCHMARKS.md (scripts/write-doc-section.py).
#
# Paths (same namespaces, same run, alternating a c d e a c d e ..., median of --runs):
#   (a) kernel: a Linux bridge br0 in the gw namespace joining gwc0 and gws0
#       (no tlsgate, no interception: the baseline of bench-tls)
#   (c) tlsgate intercepting TLS on 443 without inspection ports (configs/lab.toml
#       + [intercept] tcp_ports = [443], mode = "tls", a CA from `tlsgate ca init`,
#       upstream_trust = the origin's certificate, a connection log)
#   (d) the same on configs/lab-inspect.toml (four ports) with the box a pure Linux
#       bridge br0 in the box namespace joining boxo0 and boxi0, set up here with
#       the settings of `inspect-box.sh bridge` (STP off, forward delay 0, no
#       multicast snooping/querier, no netfilter, IPv6 off, offloads off) but
#       without any recorder
#   (e) as (d) with the box `scripts/inspect-box.sh bridge DIR` (the same bridge
#       plus tcpflow writing every flow's payload to DIR/flows; TG_BOX_NGREP=0, so
#       no ngrep)
# Workloads per path and run, in this order:
#   bulk: curl --http1.1 of a --bulk-mb file (random bytes, added to the origin's
#     www) with -o /dev/null: MB/s = size / curl's time_total (connect, TLS and
#     transfer). In run 1 a second, untimed download checks the body's SHA-256.
#   rate: ab -r -s 10 -n 2000 -c 20 https://origin.test/index.html (a new TCP
#     connection and full TLS handshake per request, as bench-tls.sh).
# Worker busy: the worker's cumulative busy/idle times from the --stats-interval
# 0.2 prints just before and after each workload: busy % of that window, busy
# ms per MB (bulk) and busy µs per connection (rate).
# Validity (a run that fails is reported as INVALID, kept in the table, and the
# script exits 1 without writing the doc): ab 0 failed and no non-2xx; every
# download 200 and the full size; in (c), (d), (e), with N = the client
# namespace's TCP ActiveOpens during the run (the connections the client opened:
# ab's and curl's): tcp.tls_intercepted from --report-json plus the connections
# the client reset during its TLS handshake (ab resets the surplus connections it
# opened beyond -n; logged with no client TLS version) equals N, tcp.tls_failed
# is 0, the connection log has N lines; tcp.inspected equals N in (d) and (e)
# (0 in (c)), with no inspection failure or block, and every connection-log line
# of (d)/(e) says "inspected".
#
# Uses its own namespaces tgi-cli/tgi-gw/tgi-srv/tgi-box (TG_NS_* overrides of
# lab-env.sh; the interface names stay those of the configs) so it can run
# beside the default lab. Installs apache2-utils, nginx-light, curl and tcpflow
# with apt-get if missing. Builds tlsgate once and runs a private copy of the
# binary. Always cleans up (trap). Bounded: every command has a timeout and a
# watchdog ends the run after 20 min.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
doc="$root/docs/BENCHMARKS.md"

export TG_NS_CLI=tgi-cli TG_NS_GW=tgi-gw TG_NS_SRV=tgi-srv TG_NS_BOX=tgi-box
# shellcheck source=scripts/lab-env.sh
. "$here/lab-env.sh"
# shellcheck source=scripts/bench-lab.sh
. "$here/bench-lab.sh"

write_doc=0 keep=0 runs=3 requests=2000 concurrency=20 bulk_mb=200 paths=acde
cmdline="scripts/bench-inspect.sh${*:+ $*}"
while (($#)); do
  case "$1" in
    --write-doc) write_doc=1 ;;
    --keep) keep=1 ;;
    --runs) runs="$2"; shift ;;
    --requests) requests="$2"; shift ;;
    --concurrency) concurrency="$2"; shift ;;
    --bulk-mb) bulk_mb="$2"; shift ;;
    --paths) paths="$2"; shift ;;
    -h|--help) sed -n '2,55p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "bench-inspect: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
[[ $(id -u) -eq 0 ]] || { echo "bench-inspect: must run as root" >&2; exit 1; }
[[ "$paths" =~ ^[acde]+$ && "$paths" == *c* ]] ||
  { echo "bench-inspect: --paths must be letters of acde and include c" >&2; exit 2; }
for n in "$runs" "$requests" "$concurrency" "$bulk_mb"; do
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "bench-inspect: $n is not a positive number" >&2; exit 2; }
done
path_list=()
for p in a c d e; do [[ "$paths" == *$p* ]] && path_list+=("$p"); done

log() { echo "bench-inspect: $*" >&2; }

# --- packages -------------------------------------------------------------------
bench_install_missing ab:apache2-utils nginx:nginx-light curl:curl tcpflow:tcpflow

# --- state and cleanup ------------------------------------------------------------
bench_begin bench-inspect
origin="$tmp/origin"
boxdir="$tmp/box-e"
bulk_bytes=$((bulk_mb * 1000000))

# The boxes of (d) and (e).
bench_stop() {
  stop_tlsgate
  [[ -d "$boxdir" ]] && timeout 60 "$here/inspect-box.sh" stop "$boxdir" >/dev/null 2>&1
  box_bridge_down
}
# The bulk file and recordings are large: drop them, keep the logs.
bench_drop_large() {
  rm -f "$origin/www/bulk.bin"
  rm -rf "$boxdir/flows"
}

# Watchdog: the whole benchmark is bounded.
bench_watchdog 1200

# --- build, CA and configs --------------------------------------------------------
bench_build_tlsgate
timeout 60 "$tmp/tlsgate" ca init --dir "$tmp/ca" >/dev/null

# --- lab and origin ---------------------------------------------------------------
timeout 120 "$here/lab-up.sh" >/dev/null
timeout 60 "$root/tests/lab/origin.sh" start "$origin" origin.test
log "writing a ${bulk_mb} MB random file to the origin"
timeout 300 head -c "$bulk_bytes" /dev/urandom >"$origin/www/bulk.bin"
bulk_sha="$(timeout 120 sha256sum "$origin/www/bulk.bin" | cut -d' ' -f1)"
bench_client_hosts
url="https://origin.test/index.html"
bulk_url="https://origin.test/bulk.bin"
# curl trusts the origin's certificate (path a) and tlsgate's CA (c, d, e).
cat "$tmp/ca/ca.pem" "$origin/origin.crt" >"$tmp/trust.pem"

tls_config "$root/configs/lab.toml" "$tmp/check.jsonl" >"$tmp/check-c.toml"
tls_config "$root/configs/lab-inspect.toml" "$tmp/check.jsonl" >"$tmp/check-d.toml"
timeout 60 "$tmp/tlsgate" check --config "$tmp/check-c.toml" >/dev/null
timeout 60 "$tmp/tlsgate" check --config "$tmp/check-d.toml" >"$tmp/check-d.out"
grep -q 'inspection' "$tmp/check-d.out" ||
  { log "tlsgate check of the inspection config does not mention the inspection ports:"; cat "$tmp/check-d.out" >&2; exit 1; }

# --- paths ------------------------------------------------------------------------

active_opens() { tcp_counter "$TG_NS_CLI" ActiveOpens; }
# RSTs sent by the client and by the server namespace so far: "client server".
rsts() { echo "$(tcp_counter "$TG_NS_CLI" OutRsts) $(tcp_counter "$TG_NS_SRV" OutRsts)"; }

start_path() {  # a|c|d|e run
  local path="$1" run="$2"
  case "$path" in
    a) kernel_path_up; return ;;
    c|d|e)
      local base="$root/configs/lab.toml" tglog="$tmp/tlsgate-$path-$run.log"
      local config="$tmp/tls-$path-$run.toml"
      if [[ "$path" == d ]]; then
        base="$root/configs/lab-inspect.toml"
        box_bridge_up
      elif [[ "$path" == e ]]; then
        base="$root/configs/lab-inspect.toml"
        TG_BOX_NGREP=0 timeout 60 "$here/inspect-box.sh" bridge "$boxdir" >"$tmp/box-e-$run.out" 2>&1 ||
          { log "inspect-box.sh bridge failed:"; cat "$tmp/box-e-$run.out" >&2; exit 1; }
      fi
      tls_config "$base" "$tmp/connections-$path-$run.jsonl" >"$config"
      start_tlsgate "$config" "$tglog" --stats-interval 0.2 --report-json "$tmp/report-$path-$run.json"
      ;;
  esac
  path_reachable "$path"
}

# busy % of the window between two snapshots and busy time per unit, scaled.
busy_window() {  # "busy idle" "busy idle" units scale; prints "pct per-unit"
  awk -v a="$1" -v b="$2" -v n="$3" -v s="$4" 'BEGIN {
    split(a, x, " "); split(b, y, " "); db = y[1] - x[1]; di = y[2] - x[2];
    printf "%.1f %.2f", (db + di > 0 ? 100 * db / (db + di) : 0), (n > 0 ? db * s / n : 0) }'
}

stop_path() {  # a|c|d|e run
  local path="$1" run="$2"
  case "$path" in
    a) ip -n "$TG_NS_GW" link del br0 ;;
    c|d|e)
      # Let intercepted sessions finish (closes, TIME-WAIT) so the connection
      # log is complete: up to 25 s.
      local tglog="$tmp/tlsgate-$path-$run.log"
      wait_sessions_closed "$tglog" 125
      live_sessions "$tglog" >"$tmp/live-$path-$run"
      stop_tlsgate_reported "$tmp/report-$path-$run.json" "$path, run $run"
      if [[ "$path" == d ]]; then
        box_bridge_down
      elif [[ "$path" == e ]]; then
        timeout 60 "$here/inspect-box.sh" stop "$boxdir" >>"$tmp/box-e-$run.out" 2>&1 || true
      fi
      ;;
  esac
}

# --- workloads --------------------------------------------------------------------
# (e): how many server->client flow files tcpflow wrote holding the whole bulk
# body (the body is the file's last bulk_bytes bytes, after the HTTP header).
recorded_bulk() {  # prints "intact/of" for the flows at least bulk_bytes long
  local f n=0 ok=0
  while IFS= read -r f; do
    n=$((n + 1))
    [[ "$(tail -c "$bulk_bytes" "$f" | sha256sum | cut -d' ' -f1)" == "$bulk_sha" ]] && ok=$((ok + 1))
  done < <(find "$boxdir/flows" -type f -size "+$((bulk_bytes / 1024 - 1))k" 2>/dev/null)
  echo "$ok/$n"
}

report_fields() {  # report.json [connections.jsonl]; prints key=value pairs
  timeout 60 python3 - "$@" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
w = report["workers"][0]
busy, idle = w["busy_ns"], w["idle_ns"]
tcp = report.get("tcp", {})
out = {
    "whole_busy": f"{100 * busy / max(busy + idle, 1):.1f}",
    "opened": tcp.get("sessions_opened", 0),
    "icpt": tcp.get("tls_intercepted", 0),
    "tls_failed": tcp.get("tls_failed", 0),
    "inspected": tcp.get("inspected", 0),
    "ifail": tcp.get("inspect_failed_open", 0) + tcp.get("inspect_failed_closed", 0),
    "iblocked": tcp.get("inspect_blocked", 0),
    "resets": tcp.get("resets", 0),
}
recs = []
if len(sys.argv) > 2:
    try:
        recs = [json.loads(line) for line in open(sys.argv[2]) if line.strip()]
    except FileNotFoundError:
        pass
out["logged"] = len(recs)
out["log_inspected"] = sum(1 for r in recs if r.get("inspection") == "inspected")
# Connections the client gave up during its TLS handshake (ab resets the
# connections it opened beyond -n when it is done): never "intercepted".
out["abandoned"] = sum(1 for r in recs if r.get("client_tls_version") is None
                       and r.get("ended", "").startswith("reset by the client"))
out["alpn"] = ",".join(sorted({str(r.get("alpn")) for r in recs})) or "-"
print(" ".join(f"{k}={v}" for k, v in out.items()))
PY
}

results="$tmp/results.tsv"
: >"$results"
invalid=0
# Warm-up (discarded): page cache of the bulk file, nginx, first-use page faults.
log "warm-up on path (a)"
start_path a 0
bulk_rate "$tmp/curl-warmup.txt" >/dev/null
https_rate "$tmp/ab-warmup.txt" >/dev/null
stop_path a 0
for run in $(seq "$runs"); do
  for path in "${path_list[@]}"; do
    log "run $run/$runs, path ($path)"
    start_path "$path" "$run"
    tglog="$tmp/tlsgate-$path-$run.log"
    opens0="$(active_opens)" rsts0="$(rsts)"
    [[ "$path" == a ]] || { sleep 0.5; b0="$(busy_snapshot "$tglog")"; }
    mbps="$(bulk_rate "$tmp/curl-$path-$run.txt")"
    [[ "$path" == a ]] || { sleep 0.3; b1="$(busy_snapshot "$tglog")"; }
    sha="-"
    ((run == 1)) && sha="$(bulk_check)"
    [[ "$path" == a ]] || { sleep 0.3; b2="$(busy_snapshot "$tglog")"; }
    opens_ab="$(active_opens)"
    rate="$(https_rate "$tmp/ab-$path-$run.txt")"
    [[ "$path" == a ]] || { sleep 0.3; b3="$(busy_snapshot "$tglog")"; }
    opens1="$(active_opens)" rsts1="$(rsts)"
    read -r crst0 srst0 <<<"$rsts0"
    read -r crst1 srst1 <<<"$rsts1"
    out_rsts="$((crst1 - crst0))/$((srst1 - srst0))"
    conns=$((opens1 - opens0)) ab_conns=$((opens1 - opens_ab))
    bulk_busy="- -" rate_busy="- -"
    if [[ "$path" != a ]]; then
      bulk_busy="$(busy_window "$b0" "$b1" "$bulk_mb" 1e3)"         # ms per MB
      rate_busy="$(busy_window "$b2" "$b3" "$ab_conns" 1e6)"        # µs per connection
    fi
    stop_path "$path" "$run"
    recorded=""
    [[ "$path" == e ]] && recorded="$(recorded_bulk)"
    whole_busy="-" opened="-" icpt="-" tls_failed="-" inspected="-" ifail="-" iblocked="-"
    resets="-" logged="-" log_inspected="-" abandoned="-" alpn="-" live="-"
    if [[ "$path" != a ]]; then
      fields="$(report_fields "$tmp/report-$path-$run.json" "$tmp/connections-$path-$run.jsonl")"
      for kv in $fields; do
        case "${kv%%=*}" in
          whole_busy|opened|icpt|tls_failed|inspected|ifail|iblocked|resets|logged|log_inspected|abandoned|alpn)
            printf -v "${kv%%=*}" '%s' "${kv#*=}" ;;
        esac
      done
      live="$(cat "$tmp/live-$path-$run")"
    fi
    read -r bulk_pct bulk_ms_mb <<<"$bulk_busy"
    read -r rate_pct rate_us <<<"$rate_busy"
    # Validity.
    why=()
    [[ "$mbps" == failed ]] && why+=("download failed")
    [[ "$rate" == failed ]] && why+=("ab failed")
    [[ "$sha" == MISMATCH ]] && why+=("SHA-256 mismatch")
    if [[ "$path" != a ]]; then
      [[ $((icpt + abandoned)) == "$conns" ]] ||
        why+=("tls_intercepted $icpt + $abandoned abandoned != $conns client connections")
      [[ "$tls_failed" == 0 ]] || why+=("tls_failed $tls_failed")
      [[ "$logged" == "$conns" ]] || why+=("$logged connection-log lines for $conns connections")
    fi
    case "$path" in
      c)
        [[ "$inspected" == 0 ]] || why+=("inspected $inspected, expected 0")
        ;;
      d|e)
        [[ "$inspected" == "$conns" ]] || why+=("inspected $inspected != $conns client connections")
        [[ "$ifail" == 0 && "$iblocked" == 0 ]] || why+=("inspection failed $ifail, blocked $iblocked")
        [[ "$log_inspected" == "$logged" ]] || why+=("only $log_inspected of $logged logged connections inspected")
        ;;
    esac
    valid=ok
    if ((${#why[@]})); then
      valid="INVALID: $(IFS=';'; echo "${why[*]}")"
      invalid=1
      log "$valid"
    fi
    log "  bulk ${mbps} MB/s (worker busy ${bulk_pct} %, ${bulk_ms_mb} ms per MB; sha ${sha});" \
        "ab ${rate} conn/s, ${ab_conns} connections (worker busy ${rate_pct} %, ${rate_us} µs per connection);" \
        "client connections ${conns}, sessions ${opened}, tls_intercepted ${icpt} (+ ${abandoned} abandoned by the client), tls_failed ${tls_failed}," \
        "inspected ${inspected}, logged ${logged} (${log_inspected} inspected), resets ${resets}," \
        "RSTs sent by client/server ${out_rsts}, alpn ${alpn}," \
        "sessions live at stop ${live}; whole-run busy ${whole_busy} %${recorded:+; recorded bulk flows intact $recorded}"
    printf '%s\t' "$path" "$run" "$mbps" "$bulk_pct" "$bulk_ms_mb" "$rate" "$rate_pct" "$rate_us" \
      "$conns" "$icpt" "$inspected" "$logged" "$log_inspected" "$live" "$whole_busy" "$sha" \
      "${recorded:--}" "$tls_failed" "$resets" "$ab_conns" "$abandoned" "$out_rsts" >>"$results"
    printf '%s\n' "$valid" >>"$results"
    sleep 1
  done
done

# --- table ------------------------------------------------------------------------
table="$tmp/table.md"
timeout 60 python3 - "$results" "$requests" "$concurrency" "$bulk_mb" "$paths" >"$table" <<'PY'
import math, statistics, sys
rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1]) if line.strip()]
requests, conc, bulk_mb, paths = sys.argv[2:6]
names = {"a": "(a) kernel bridge (br0 in gw ns), no tlsgate",
         "c": "(c) tlsgate TLS interception, no inspection ports",
         "d": "(d) interception + inspection loop, box = bare bridge",
         "e": "(e) interception + inspection loop, box = bridge + tcpflow"}
P = [p for p in "acde" if p in paths]
def num(text):
    try:
        return float(text)
    except ValueError:
        return float("nan")
def med(path, col):
    all_rows = [r for r in rows if r[0] == path]
    vals = [num(r[col]) for r in all_rows]
    vals = [v for v in vals if not math.isnan(v)]
    if not vals or len(vals) * 2 <= len(all_rows):
        return float("nan")   # a majority of runs failed
    return statistics.median(vals)
def per_run(path, col):
    return " / ".join(r[col] for r in rows if r[0] == path)
def fmt(value, digits):
    return "-" if math.isnan(value) else f"{value:,.{digits}f}"
def ratio(p, q, col):
    a, b = med(p, col), med(q, col)
    return a / b if b > 0 else float("nan")
ratios = [(p, q) for p, q in (("d", "c"), ("e", "c"), ("e", "d"), ("c", "a")) if p in P and q in P]

print(f"| path | bulk, curl --http1.1 {bulk_mb} MB (MB/s) | per run | worker busy during the "
      f"download (%) | worker busy per MB (ms) | ab -n {requests} -c {conc} https (conn/s) | per run | "
      "worker busy during ab (%) | worker busy per connection (µs) |")
print("|---|---:|---|---:|---:|---:|---|---:|---:|")
for p in P:
    print(f"| {names[p]} | {fmt(med(p, 2), 1)} | {per_run(p, 2)} | {fmt(med(p, 3), 1)} | "
          f"{fmt(med(p, 4), 2)} | {fmt(med(p, 5), 0)} | {per_run(p, 5)} | {fmt(med(p, 6), 1)} | "
          f"{fmt(med(p, 7), 0)} |")
for p, q in ratios:
    busy = p != "a" and q != "a"
    print(f"| ratio {p}/{q} | {fmt(ratio(p, q, 2), 2)} | | | "
          f"{fmt(ratio(p, q, 4), 2) if busy else ''} | {fmt(ratio(p, q, 5), 2)} | | | "
          f"{fmt(ratio(p, q, 7), 2) if busy else ''} |")
print()
print("Per run: the client's TCP connections while tlsgate ran (the client namespace's "
      "`ActiveOpens`; ab's of them) / `tcp.tls_intercepted` (+ connections the client reset "
      "during its TLS handshake, from the connection log) / `tcp.inspected` (`--report-json`); "
      "connection-log lines (of which \"inspected\"); `tcp.resets`; RSTs sent by the client / by the "
      "server namespace (their `OutRsts`); sessions live at stop; "
      "worker busy over the whole tlsgate run (%); validity:")
print()
for p in P:
    if p == "a":
        print("- (a): ab connections " + " / ".join(r[19] for r in rows if r[0] == p) +
              "; RSTs sent by client/server " + " / ".join(r[21] for r in rows if r[0] == p))
        continue
    cells = []
    for r in [r for r in rows if r[0] == p]:
        rec = f"; bulk flows recorded intact {r[16]}" if p == "e" else ""
        cells.append(f"{r[8]} (ab {r[19]}) / {r[9]} (+{r[20]}) / {r[10]}; log {r[11]} ({r[12]}); resets {r[18]}; RSTs sent {r[21]}; "
                     f"live {r[13]}; busy {r[14]}{rec}; {r[22]}")
    print(f"- ({p}): " + " — ".join(cells))
loads = ", ".join(f"({p}) {fmt(med(p, 4) * med(p, 2) / 10, 0)} %" for p in P if p != "a")
print(f"- Worker load implied during the bulk transfer itself (busy ms per MB x MB/s, medians): {loads}")
shas = ", ".join(f"({r[0]}) {r[15]}" for r in rows if r[15] != "-")
print(f"- SHA-256 of one {bulk_mb} MB download per path (run 1): {shas}")
PY
cat "$table"

bench_doc_gate "$invalid"

# Version strings (some of these tools exit non-zero after printing them).
bench_tool_versions
tcpflow_version="$(tcpflow -V 2>/dev/null | awk 'NR == 1 {print $2}')" || true
section="$tmp/section.md"
{
  cat <<EOF
## Inspection loop cost

Reproduce (root): \`$cmdline\` (about $(((SECONDS + 59) / 60)) min here; own namespaces
tgi-cli/tgi-gw/tgi-srv/tgi-box, so it can run beside the default lab; installs apache2-utils,
nginx-light, curl and tcpflow if missing).
Machine: $(nproc) vCPU ${cpu:-unknown CPU}${hyper:+ ($hyper guest)}, Linux $(uname -r),
run on $(date -u +%Y-%m-%d).

What it measures: with an inspection box configured, every intercepted TLS connection's
plaintext leaves the appliance through \`inspect_out\` (gwio0) as a new TCP connection, crosses
the box (tgi-box, between boxo0 and boxi0) and is accepted back on \`inspect_in\` (gwii0), so
each connection costs two more TCP legs in the worker's smoltcp stack, twice the frames
through af_packet, and the box's forwarding. Paths, measured in the same run, alternating,
median of ${runs}:
(a) a Linux bridge in the gw namespace joining gwc0 and gws0 (no tlsgate; bench-tls' baseline);
(c) \`tlsgate run\` on configs/lab.toml plus \`[intercept] tcp_ports = [443], mode = "tls"\`, a
CA from \`tlsgate ca init\`, \`upstream_trust\` = the origin's certificate and a connection log;
(d) the same on configs/lab-inspect.toml (the same two ports plus the inspection pair), the
box a bare Linux bridge in tgi-box (set up by the script with \`inspect-box.sh bridge\`'s
settings: STP off, forward delay 0, no multicast snooping, no netfilter, IPv6 and offloads
off; no recorder); (e) as (d) with the box \`scripts/inspect-box.sh bridge DIR\`, i.e. the
same bridge plus tcpflow ${tcpflow_version:-} writing each flow's payload to a file
(\`TG_BOX_NGREP=0\`: no ngrep).
Workloads, in each path and run: bulk, curl ${curl_version:-} \`--http1.1 -o /dev/null
https://origin.test/bulk.bin\`, a ${bulk_mb} MB file of random bytes (MB = 10^6 bytes;
MB/s = size / curl's total time, connection set-up and TLS included), one connection, one
stream; in run 1 a second, untimed download checks the body's SHA-256. Then connection
rate, ApacheBench ${ab_version:-} \`ab -n ${requests} -c ${concurrency}
https://origin.test/index.html\` (a new TCP connection and a full TLS handshake per
request, a 23-byte body), as in bench-tls. Origin: ${nginx_version:-nginx} in tgi-srv
(\`tests/lab/origin.sh\`, TLS 1.2/1.3, ECDSA P-256). "Worker busy" is the worker's busy /
(busy + idle) time between the \`--stats-interval 0.2\` prints just before and after the
workload (±0.2 s at each end), and that busy time per MB or per connection. A run is void
unless every download is complete (and the checked one byte-exact), ab reports no failed
request, and, with N the number of TCP connections the client namespace opened while
tlsgate ran (its \`ActiveOpens\`: ab's and curl's), \`tcp.tls_intercepted\` from
\`--report-json\` plus the connections the client reset during its own TLS handshake
(ab resets the few surplus connections it opened beyond -n when it is done; the connection
log shows them without a client TLS version, "reset by the client") equals N, with
\`tcp.tls_failed\` 0 and N connection-log lines; \`tcp.inspected\` equals N in (d) and (e)
(0 in (c)), with no inspection failure or block and every connection-log line of (d)/(e)
marked "inspected". (The loop is opened as soon as the client's ClientHello is read and
the policy says intercept, so ab's abandoned connections count as inspected though their
interception never completed.)

EOF
  cat "$table"
  cat <<'EOF'

Reading the ratios: d/c is the price of the loop itself (two more TCP legs terminated and
originated by the same worker, every payload byte crossing af_packet twice more, and a
kernel bridge forwarding in between); e/d adds what a recorder in the box costs when it
shares the machine with everything else; the busy-per-unit ratios are the worker's own
extra work per connection or per MB, whatever the rates. Where the implied worker load
during the transfer (the last list above) is close to 100 %, the single stream is bounded by
the worker, and the bulk ratio is about the inverse of the busy-per-MB ratio; where it is
well below, the rate is bounded elsewhere (the client, nginx, the kernel, windows).

Caveats:

- 2 vCPUs are shared by curl/ab, nginx, the kernel's veth and bridge work (in (d) and (e)
  also the box's bridge and its two veth pairs), tcpflow in (e), and tlsgate's busy-polling
  worker (lcore 1) plus its main thread. The worker polls on one vCPU (it backs off into
  short sleeps only after idle polls), so under load everything else has about one vCPU in
  (c)-(e); the rates are therefore bounded by CPU contention as much as by the appliance, and
  single runs vary (compare the per-run lists).
- "Busy" is wall-clock time of the worker's polls that received frames (crates/appliance
  worker.rs), so it includes any time the vCPU was taken from the worker mid-poll. Busy per
  connection moves by up to about 30 % between runs of the same path; a busy-per-connection ratio
  within that of 1 means the loop's per-connection cost is lost in the noise beside the two
  TLS handshakes, not that it is zero.
- The box here is a kernel bridge in a namespace on the same machine: a cheap box. A real
  inspection appliance (IDS, DLP, AV) adds its own latency and CPU; this measures the loop's
  plumbing, not an inspection engine. tcpflow in (e) writes every payload byte to disk (the
  page cache, in practice): its cost is a lower bound for a recording box.
- The bulk workload is one connection: the stack's sockets have 64 KiB buffers (`[tcp]`
  defaults, no larger window) and with the loop each byte crosses four legs in series, each
  with its own window and round trip through the worker, so windows could bound it as well
  as the worker's CPU; the implied-load line says which bound applied in this run. Several
  parallel downloads (not measured here) would spread over the worker differently.
- HTTP/1.x only: curl runs with `--http1.1` (ALPN http/1.1), ab speaks HTTP/1.0 without
  ALPN; nginx also offers HTTP/2, not measured here (one multiplexed connection would pay the
  loop's per-connection cost once for many requests).
- An intercepted session counts as live until its legs leave smoltcp's TIME-WAIT, about 10 s
  after the connection ended (with the loop a loop leg lingers as well as the client leg), so
  ab's connections are all still live when it finishes; the script waits for them before
  stopping tlsgate.
- RSTs at the end of ab's connections: nginx sends about one RST per ab connection on every
  path, the kernel bridge (a) included (the server namespace's `OutRsts` in the per-run
  list), so some sessions end "reset by the server" in the connection log; with tlsgate the
  client also sends RSTs (hundreds per run in (c)-(e), a handful in (a)), mostly on legs the
  appliance already counts as finished (`tcp.resets` is far above the sessions logged as
  reset, so it also counts RSTs on legs of sessions that had ended cleanly). Not investigated further here; every request was answered (ab reports
  no failed request) and every session is accounted for in the validity checks.
- ab and nginx use OpenSSL, curl OpenSSL too, tlsgate rustls with ring; the upstream leg
  may resume TLS sessions (nginx issues TLS 1.3 tickets), as in bench-tls.
EOF
} >"$section"

mkdir -p "$(dirname "$doc")"
python3 "$here/write-doc-section.py" "$doc" "$section" bench-inspect
log "wrote the bench-inspect section of $doc"
