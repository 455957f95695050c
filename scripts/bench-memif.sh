#!/usr/bin/env bash
# scripts/bench-memif.sh — the appliance's own CPU cost with no kernel in the
# path (issue 17): tlsgate-loadgen and tlsgate joined by memif (shared-memory
# rings between the two processes), tlsgate's CPU per intercepted connection
# and per GB relayed with and without the inspection loop, judged against the
# in-memory rustls floor of the same run; and 2 workers against 1, over memif
# and in memory.
#
# Usage: scripts/bench-memif.sh [--write-doc] [--runs N] [--quick]
#          [--connections N] [--rate N] [--bulk-mb N] [--no-profile] [--keep]
#          [--baseline PATH] [--burst-sizes "N ..."]   (root)
#   --runs: runs, each measuring every variant once (default 3); the tables
#     show the medians of the per-run values and ratios. Also the rounds of
#     the 2-worker comparison.
#   --connections/--rate: connections of the connection workload and the rate
#     the generator opens them at (default 1000 at 500/s).
#   --bulk-mb: MB (10^6 B) relayed by the bulk workload (default 400), over
#     16 connections.
#   --quick: a smoke test (1 run, 300 connections, 100 MB, a shorter floor and
#     a smaller 2-worker comparison).
#   --no-profile: no perf profile of the targets not met.
#   --keep: keep the temp dir (configs, logs, reports, per-run records).
#   --baseline: a release tlsgate binary built from another commit (say main)
#     to compare with: every run measures each variant with it too (right
#     before this tree's), and the script prints and keeps (ab.md) the median
#     per-run ratios of tlsgate's CPU per connection and per GB, this tree ÷
#     baseline (scripts/bench-memif/ab.py). Each build is its own box; the doc
#     and the profile use this tree's.
#   --burst-sizes: also measure the 1-worker variant with each of these
#     dataplane.burst_size values (1-512), in every run after the other
#     variants, and print each one's CPU per connection and per GB ÷ the
#     1-worker variant's (the default burst size).
#   --write-doc: (re)write the section between <!-- bench-memif:begin --> and
#   <!-- bench-memif:end --> of docs/BENCHMARKS.md and the chart docs/bench-memif.svg.
#
# No namespaces and no network: tlsgate's client and server ports are memif
# servers on sockets in the temp dir, tlsgate-loadgen attaches to them as memif
# clients (the clients on one, the origins on the other, as
# tests/loadgen_lab.rs does). Variants, each on a fresh 1-worker tlsgate, in
# every run:
#   one: no inspection loop.
#   two: no inspection loop, 2 workers (tlsgate-loadgen --rx-queues 2: memif
#     has no RSS, so tlsgate's worker 0 reads the one receive queue and hands
#     worker 1 its connections' frames, and each worker transmits on its own
#     queue, which the generator polls).
#   burstN (--burst-sizes): as one, with dataplane.burst_size = N.
#   inspect: the inspection loop: tlsgate's inspect_out and inspect_in ports are
#     memif servers too, and the box is a second tlsgate with no [intercept]
#     (an L2 bridge: it classifies and forwards every frame unchanged, and
#     sleeps when idle) attached to them as memif clients.
# Workloads per variant (fresh client prefixes for each, so no tuple meets
# one of an earlier connection in TIME-WAIT):
#   conn: --connections TLS connections at --rate, each a handshake on both
#     legs, a 200 B request, a 2000 B response, then closed by the client.
#   bulk: 16 connections each downloading --bulk-mb / 16 (one response each).
#   CPU around each workload (the generator's whole life): tlsgate's utime +
#   stime (/proc/PID/stat, all threads), its worker thread's CPU
#   (/proc/PID/task/TID/schedstat), the box's CPU, the whole machine's busy CPU
#   (/proc/stat) and the other processes' (scripts/bench-compare/othercpu.py).
# rustls floor, once per run: crates/mitm/examples/tls_floor.rs --json, as
#   bench-compare.sh runs it (two handshakes per connection, weighted by the
#   share of upstream legs that resumed, from tlsgate's connection log; bare
#   AES-256-GCM decrypt + encrypt per GB).
# 2 workers against 1: over memif (the variant two against one: wall rates,
#   CPU per unit, and the 1 worker's CPU ÷ the busier of the 2 workers'), and
#   in memory: cargo's worker_scaling example (crates/loadgen/examples/worker_scaling.rs),
#   1 and 2 threads each owning an engine and its generator, --runs rounds,
#   small exchanges and 4 bulk connections per thread; the ratio from each
#   thread's CPU time (connections per CPU second of the busier thread).
# Profile: for each target not met, after the runs, `perf record -e cpu-clock`
#   on a fresh 1-worker tlsgate during one more pass of that workload; the
#   section lists the top symbols.
# Validity (else the run is INVALID and the doc is not written): every
# connection of the generator handshaken and exchanged, no reset, timeout or
# TLS error; tlsgate intercepted every connection and failed none; with the
# loop, every one inspected and none failed open or closed.
#
# Installs python3 and openssl with apt-get if missing (perf is used when
# present). Builds tlsgate, tlsgate-loadgen and the tls_floor and worker_scaling
# examples (release) once and runs private copies. Always cleans up (trap: processes, memif
# sockets, DPDK runtime directories). Bounded: every command has a timeout, a
# watchdog ends the run after 20 min.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
doc="$root/docs/BENCHMARKS.md"
chart="$root/docs/bench-memif.svg"
helpers="$here/bench-memif"

bench_no_lab=1
# shellcheck source=scripts/lab-env.sh
. "$here/lab-env.sh"
# shellcheck source=scripts/bench-lab.sh
. "$here/bench-lab.sh"

baseline=""
write_doc=0 keep=0 runs=3 connections=1000 rate=500 bulk_mb=400 profile=1
floor_args=(--rounds 5)
scaling_conns=1000 scaling_bulk_mb=50
burst_sizes=()
cmdline="scripts/bench-memif.sh${*:+ $*}"
while (($#)); do
  case "$1" in
    --write-doc) write_doc=1 ;;
    --keep) keep=1 ;;
    --runs) runs="$2"; shift ;;
    --connections) connections="$2"; shift ;;
    --rate) rate="$2"; shift ;;
    --bulk-mb) bulk_mb="$2"; shift ;;
    --no-profile) profile=0 ;;
    --baseline) baseline="$2"; shift ;;
    --burst-sizes) read -r -a burst_sizes <<<"$2"; shift ;;
    --quick) runs=1 connections=300 bulk_mb=100
      floor_args=(--rounds 3 --connections 100 --bytes 100000000) scaling_conns=200 scaling_bulk_mb=5 ;;
    -h|--help) sed -n '2,/^set -euo/{/^set -euo/!p}' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "bench-memif: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
[[ $(id -u) -eq 0 ]] || { echo "bench-memif: must run as root (DPDK)" >&2; exit 1; }
for n in "$runs" "$connections" "$rate" "$bulk_mb"; do
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "bench-memif: $n is not a positive number" >&2; exit 2; }
done
((runs <= 20 && connections <= 50000)) ||
  { echo "bench-memif: at most 20 runs and 50000 connections" >&2; exit 2; }
for n in "${burst_sizes[@]}"; do
  if ! [[ "$n" =~ ^[1-9][0-9]*$ ]] || ((n > 512)); then
    echo "bench-memif: --burst-sizes: $n is not a burst size (1-512)" >&2; exit 2
  fi
done

log() { echo "bench-memif: $*" >&2; }

bench_install_missing python3:python3 openssl:openssl

bulk_conns=16
bulk_each=$((bulk_mb * 1000000 / bulk_conns))
bulk_bytes=$((bulk_each * bulk_conns))
# Every DPDK process of this run gets a file prefix starting with this (its
# runtime directory /var/run/dpdk/PREFIX is removed at the end).
prefix="tgmemif$$"
box_pid="" perf_pid="" lg_rx_queues=1
bench_begin bench-memif

bench_stop() {
  [[ -n "$perf_pid" ]] && stop_interrupted "$perf_pid"
  stop_interrupted "$box_pid"
  box_pid=""
  # The generator runs in the foreground under timeout: nothing of it is left.
  stop_tlsgate
  rm -f "$tmp"/*.sock
  rm -rf "/var/run/dpdk/$prefix"*
}
bench_drop_large() { rm -f "$tmp"/perf-*.data; }

bench_watchdog 1200

# --- build, CA, origin certificate ------------------------------------------------
bench_build_tlsgate
cp "$root/target/release/tlsgate-loadgen" "$tmp/tlsgate-loadgen"
# With --baseline, $tmp/tlsgate points at the binary under test.
builds=(new)
if [[ -n "$baseline" ]]; then
  builds=(base new)
  cp "$baseline" "$tmp/tlsgate-base"
  mv "$tmp/tlsgate" "$tmp/tlsgate-new"
  ln -s tlsgate-new "$tmp/tlsgate"
fi
log "building the tls_floor example (release)"
(cd "$root" && timeout 1200 cargo build --release --quiet -p mitm --example tls_floor)
cp "$root/target/release/examples/tls_floor" "$tmp/tls_floor"
log "building the worker_scaling example (release)"
(cd "$root" && timeout 1200 cargo build --release --quiet -p loadgen --example worker_scaling)
cp "$root/target/release/examples/worker_scaling" "$tmp/worker_scaling"
timeout 60 "$tmp/tlsgate" ca init --dir "$tmp/ca" >/dev/null
timeout 30 openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
  -subj /CN=origin.test -addext subjectAltName=DNS:origin.test,IP:198.18.0.2 \
  -addext basicConstraints=critical,CA:FALSE -keyout "$tmp/origin.key" -out "$tmp/origin.crt" 2>/dev/null
perf_ok=0
if ((profile)) && bench_perf_usable; then
  perf_ok=1
fi

# --- configs ------------------------------------------------------------------------
# EAL arguments of one process: no hugepages, no shared files, its own prefix,
# N lcores all free to run on either CPU (the scheduler places them; CPU time,
# not wall time, is what is compared).
eal_list() {  # lcores tag; prints a TOML array's items
  local lcores="" i
  for ((i = 0; i < $1; i++)); do lcores+="${lcores:+,}$i@(0-1)"; done
  printf '"--no-huge", "-m", "1024", "--no-shconf", "--no-pci", "--lcores", "%s", "--file-prefix", "%s"' \
    "$lcores" "$prefix-$2"
}

memif() {  # index role socket-name
  echo "net_memif$1,role=$2,socket=$tmp/$3.sock,id=0"
}

# The workers of a variant's tlsgate (and so the receive queues the generator polls).
variant_workers() {  # variant
  if [[ "$1" == two ]]; then echo 2; else echo 1; fi
}

appliance_config() {  # variant tag; prints the config
  local variant="$1" tag="$2" workers
  workers="$(variant_workers "$variant")"
  cat <<EOF
[dataplane]
eal_args = [$(eal_list $((workers + 1)) "$tag")]
workers = $workers
mbufs = 16383
EOF
  [[ "$variant" == burst* ]] && echo "burst_size = ${variant#burst}"
  cat <<EOF

[ports.client]
device = "$(memif 0 server client)"

[ports.server]
device = "$(memif 1 server server)"
EOF
  [[ "$variant" == inspect ]] && cat <<EOF

[ports.inspect_out]
device = "$(memif 2 server inspect-out)"

[ports.inspect_in]
device = "$(memif 3 server inspect-in)"
EOF
  cat <<EOF

[intercept]
tcp_ports = [443]
mode = "tls"

[tls]
ca_cert = "$tmp/ca/ca.pem"
ca_key = "$tmp/ca/ca.key"
upstream_trust = "$tmp/origin.crt"

[log]
connections = "$tmp/connections-$tag.jsonl"
EOF
}

# The inspection box: tlsgate without [intercept] bridging inspect_out to inspect_in.
box_config() {  # tag
  cat <<EOF
[dataplane]
eal_args = [$(eal_list 2 "box-$1")]
workers = 1
mbufs = 16383

[ports.client]
device = "$(memif 0 client inspect-out)"

[ports.server]
device = "$(memif 1 client inspect-in)"
EOF
}

appliance_config inspect check >"$tmp/check.toml"
timeout 60 "$tmp/tlsgate" check --config "$tmp/check.toml" >/dev/null
box_config check >"$tmp/check-box.toml"
timeout 60 "$tmp/tlsgate" check --config "$tmp/check-box.toml" >/dev/null

start_variant() {  # variant tag
  lg_rx_queues="$(variant_workers "$1")"
  appliance_config "$1" "$2" >"$tmp/tlsgate-$2.toml"
  start_tlsgate "$tmp/tlsgate-$2.toml" "$tmp/tlsgate-$2.log" --report-json "$tmp/report-$2.json"
  if [[ "$1" == inspect ]]; then
    box_config "$2" >"$tmp/box-$2.toml"
    "$tmp/tlsgate" run --config "$tmp/box-$2.toml" >"$tmp/box-$2.log" 2>&1 &
    box_pid=$!
    wait_tlsgate_running "$tmp/box-$2.log" "$box_pid"
  fi
  # The memif clients connect within milliseconds of their start.
  sleep 0.5
}

stop_variant() {  # tag
  stop_tlsgate_reported "$tmp/report-$1.json" "$1"
  stop_interrupted "$box_pid"
  box_pid=""
  rm -f "$tmp"/*.sock
}

# --- measurements -------------------------------------------------------------------
# CPU seconds of each worker thread of a process (tlsgate names them
# tlsgate-worker-N, cut to 15 characters), comma-separated in the order of their
# thread ids (the order they started in), from /proc/PID/task/TID/schedstat (ns);
# "-" when there is none.
worker_cpu() {  # pid
  local t out
  out="$(for t in /proc/"$1"/task/*; do
    [[ "$(cat "$t/comm" 2>/dev/null)" == tlsgate-worker* ]] || continue
    echo "${t##*/} $(awk '{print $1}' "$t/schedstat")"
  done | sort -n | awk '{printf "%s%.3f", (NR > 1 ? "," : ""), $2 / 1e9}')"
  echo "${out:--}"
}

snap() {  # name
  local box=0
  [[ -n "$box_pid" ]] && box="$(proc_cpu_seconds "$box_pid")"
  echo "$(proc_cpu_seconds "$tg_pid") $(worker_cpu "$tg_pid") $box $(date +%s.%N) $(machine_cpu_seconds)" \
    >"$tmp/snap-$1"
  timeout 30 python3 "$here/bench-compare/othercpu.py" snapshot $$ >"$tmp/snap-$1.other" 2>/dev/null ||
    echo '{}' >"$tmp/snap-$1.other"
}

# Prints "cpu workers box wall machine other" between two snapshots
# (workers: each worker's CPU seconds, comma-separated).
snap_delta() {  # name1 name2
  local other
  other="$(timeout 30 python3 "$here/bench-compare/othercpu.py" diff "$tmp/snap-$1.other" "$tmp/snap-$2.other" \
    2>/dev/null)" || other=nan
  awk -v o="$other" '{ c[NR] = $1; w[NR] = $2; b[NR] = $3; t[NR] = $4; m[NR] = $5 }
    END { n = split(w[1], w1, ","); split(w[2], w2, ","); ws = (w[1] == "-" ? "-" : "")
      for (i = 1; i <= n && ws != "-"; i++) ws = ws (i > 1 ? "," : "") sprintf("%.3f", w2[i] - w1[i])
      printf "%.2f %s %.2f %.2f %.2f %s\n", c[2] - c[1], ws, b[2] - b[1], t[2] - t[1], m[2] - m[1], o }' \
    "$tmp/snap-$1" "$tmp/snap-$2"
}

# Runs the generator (its clients in 198.19.PREFIX.0/24) to completion, polling
# as many receive queues as the running variant's tlsgate has workers; its JSON
# report in $tmp/lg-TAG.json, its output in $tmp/lg-TAG.log.
loadgen() {  # tag client-prefix-octet connections rate buffer request-bytes response-bytes
  local tag="$1"
  timeout 300 "$tmp/tlsgate-loadgen" \
    --client-device "$(memif 0 client client)" --server-device "$(memif 1 client server)" \
    --eal-args "$(eal_list 1 "lg-$tag" | tr -d '",')" --rx-queues "$lg_rx_queues" \
    --clients "198.19.$2.0/24" --server 198.18.0.2:443 --connections "$3" --rate "$4" --buffer "$5" \
    --request-bytes "$6" --response-bytes "$7" --hold close --until-done --duration 240 --report-interval 5 \
    --trust "$tmp/ca/ca.pem" --cert "$tmp/origin.crt" --key "$tmp/origin.key" \
    --report-json "$tmp/lg-$tag.json" >"$tmp/lg-$tag.log" 2>&1 ||
    log "tlsgate-loadgen ($tag) failed: $(tail -3 "$tmp/lg-$tag.log" | tr '\n' ' ')"
}

# Why the generator's run is void (nothing when it is not).
loadgen_faults() {  # tag connections
  python3 - "$tmp/lg-$1.json" "$2" <<'EOF' 2>/dev/null || echo "no_generator_report"
import json, sys
j = json.load(open(sys.argv[1]))
n = int(sys.argv[2])
bad = [f"{k}_{j[k]}" for k in ("handshakes", "exchanges") if j[k] != n]
bad += [f"{k}_{j[k]}" for k in ("resets", "timeouts", "tls_errors") if j[k]]
print(";".join(bad))
EOF
}

# The workload WHAT (conn or bulk) on the running variant: prints the record's fields.
workload() {  # what tag octet
  local what="$1" tag="$2-$1" n
  snap w0
  case "$what" in
    conn) n="$connections"; loadgen "$tag" "$3" "$connections" "$rate" 4096 200 2000 ;;
    bulk) n="$bulk_conns"; loadgen "$tag" "$3" "$bulk_conns" 100 262144 200 "$bulk_each" ;;
  esac
  snap w1
  read -r cpu workers box wall machine other <<<"$(snap_delta w0 w1)"
  local faults
  faults="$(loadgen_faults "$tag" "$n")"
  echo "load=$what units=$n cpu=$cpu workers=$workers box=$box wall=$wall machine=$machine" \
    "other=$other lg_faults=${faults:--}"
}

# Why the variant's tlsgate run is void; and the share of upstream legs resumed.
appliance_faults() {  # variant tag expected-connections
  python3 - "$tmp/report-$2.json" "$1" "$3" <<'EOF' 2>/dev/null || echo "no_tlsgate_report"
import json, sys
t = json.load(open(sys.argv[1]))["tcp"]
variant, n = sys.argv[2], int(sys.argv[3])
bad = []
if t.get("tls_intercepted", 0) != n:
    bad.append(f"tls_intercepted_{t.get('tls_intercepted', 0)}_of_{n}")
if t.get("tls_failed", 0):
    bad.append(f"tls_failed_{t['tls_failed']}")
if variant == "inspect":
    if t.get("inspected", 0) != n:
        bad.append(f"inspected_{t.get('inspected', 0)}_of_{n}")
    for k in ("inspect_failed_open", "inspect_failed_closed"):
        if t.get(k, 0):
            bad.append(f"{k}_{t[k]}")
elif t.get("inspected", 0):
    bad.append(f"inspected_{t['inspected']}_without_a_loop")
print(";".join(bad))
EOF
}

resumed_share() {  # tag; prints "resumed/logged" of the connection log
  python3 - "$tmp/connections-$1.jsonl" <<'EOF' 2>/dev/null || echo "-"
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print(f"{sum(1 for r in recs if r.get('server_resumed'))}/{len(recs)}")
EOF
}

tls_floor() {  # run
  local run="$1"
  timeout 30 python3 "$here/bench-compare/othercpu.py" snapshot $$ >"$tmp/floor-other-0"
  if ! timeout 300 "$tmp/tls_floor" --json "${floor_args[@]}" >"$tmp/floor-$run.json" 2>"$tmp/floor-$run.txt"; then
    log "tls_floor failed (run $run): $(tail -3 "$tmp/floor-$run.txt" | tr '\n' ' ')"
    rm -f "$tmp/floor-$run.json"
    return 0
  fi
  timeout 30 python3 "$here/bench-compare/othercpu.py" snapshot $$ >"$tmp/floor-other-1"
  echo "run=$run other=$(timeout 30 python3 "$here/bench-compare/othercpu.py" diff \
    "$tmp/floor-other-0" "$tmp/floor-other-1" || echo nan)" >>"$tmp/floor.kv"
}

# --- runs -------------------------------------------------------------------------
records="$tmp/records.kv"
: >"$records"
: >"$tmp/floor.kv"
invalid=0
octet=0
variants=(one inspect two)
for n in "${burst_sizes[@]}"; do variants+=("burst$n"); done
for run in $(seq "$runs"); do
  log "run $run/$runs: rustls floor (tls_floor example, in memory)"
  tls_floor "$run"
  for variant in "${variants[@]}"; do
  for build in "${builds[@]}"; do
    tag="$variant-$run" out="$records"
    if [[ "$build" == base ]]; then tag="base-$tag" out="$tmp/records-base"; fi
    ((${#builds[@]} > 1)) && ln -sfn "tlsgate-$build" "$tmp/tlsgate"
    log "run $run/$runs: $variant ($build)"
    start_variant "$variant" "$tag"
    lines=()
    for what in conn bulk; do
      octet=$((octet + 1))
      lines+=("$(workload "$what" "$tag" "$octet")")
    done
    stop_variant "$tag"
    faults="$(appliance_faults "$variant" "$tag" $((connections + bulk_conns)))"
    resumed="$(resumed_share "$tag")"
    for line in "${lines[@]}"; do
      why="$faults"
      lg="$(sed -n 's/.*lg_faults=\([^ ]*\).*/\1/p' <<<"$line")"
      [[ "$lg" != - ]] && why="${why:+$why;}generator_$lg"
      valid=ok
      if [[ -n "$why" ]]; then valid="INVALID:$why"; invalid=1; log "  $variant ($tag): $valid"; fi
      echo "run=$run variant=$variant $line resumed=$resumed bytes=$bulk_bytes valid=$valid" >>"$out"
      log "  $line"
    done
  done
  done
done
if [[ -n "$baseline" ]]; then
  ln -sfn tlsgate-new "$tmp/tlsgate"
  timeout 60 python3 "$helpers/ab.py" "$records" "$tmp/records-base" | tee "$tmp/ab.md"
fi

# --- 2 workers against 1, in memory ---------------------------------------------------
scaling() {  # what connections-per-thread response-bytes
  log "2 workers against 1 (in memory, worker_scaling example): $1"
  timeout 900 "$tmp/worker_scaling" "$2" "$runs" "$3" >"$tmp/scaling-$1.txt" 2>&1 ||
    { log "worker_scaling ($1) failed: $(tail -3 "$tmp/scaling-$1.txt" | tr '\n' ' ')"; invalid=1; }
  grep '^{' "$tmp/scaling-$1.txt" | tail -1 >"$tmp/scaling-$1.json" || true
}
scaling conn "$scaling_conns" 2000
scaling bulk 4 $((scaling_bulk_mb * 1000000))

# --- profile of the targets not met -------------------------------------------------
report() {  # svg-path; prints the tables
  timeout 60 python3 "$helpers/report.py" "$tmp" "$1"
}
report "$tmp/bench-memif.svg" >"$tmp/table.md"
cat "$tmp/table.md"
unmet="$(sed -n 's/^<!-- not met: \(.*\) -->$/\1/p' "$tmp/table.md")"
if ((perf_ok)) && [[ -n "$unmet" ]]; then
  for what in $unmet; do
    [[ "$what" == conn || "$what" == bulk ]] || continue
    tag="profile-$what"
    log "profile: perf record on tlsgate (1 worker) during the $what workload"
    start_variant one "$tag"
    perf record -q -e cpu-clock -F 1999 -p "$tg_pid" -o "$tmp/perf-$what.data" >"$tmp/perf-$what.log" 2>&1 &
    perf_pid=$!
    sleep 0.5
    octet=$((octet + 1))
    workload "$what" "$tag" "$octet" >/dev/null
    stop_interrupted "$perf_pid"
    perf_pid=""
    stop_variant "$tag"
    bench_perf_top "$tmp/perf-$what.data" "$tmp/profile-$what.txt" dso,sym
  done
  report "$tmp/bench-memif.svg" >"$tmp/table.md"
fi
[[ -n "$unmet" ]] && ((profile && !perf_ok)) && log "targets not met ($unmet), but perf is not usable here: no profile"

bench_doc_gate "$invalid"

# --- doc --------------------------------------------------------------------------
bench_tool_versions
commit="$(git -C "$root" rev-parse --short HEAD 2>/dev/null)" || true
dirty="$(git -C "$root" status --porcelain --untracked-files=no 2>/dev/null | head -1)" || true
dpdk_version="$(dpkg-query -W -f '${Version}' dpdk 2>/dev/null || dpkg-query -W -f '${Version}' librte-net-memif23 2>/dev/null)" || true
minutes=$(((SECONDS + 59) / 60))
section="$tmp/section.md"
{
  cat <<EOF
## Appliance only: tlsgate and the load generator over memif (issue 17)

Reproduce (root): \`$cmdline\` (about $minutes min here, builds included; no namespaces, so
it can run beside the lab). Machine: $(nproc) vCPU ${cpu:-unknown CPU}${hyper:+ ($hyper guest)},
Linux $(uname -r), DPDK ${dpdk_version:-?}, run on $(date -u +%Y-%m-%d) at commit ${commit:-?}${dirty:+ (with uncommitted changes)}.

![Medians of the run below: tlsgate's CPU per connection and per GB against the rustls floor, and 2 workers against 1 over memif and in memory](bench-memif.svg)

**Noise.** The "other processes" column below gives how many cores processes outside
the benchmark took during each workload (0.00 when the machine was quiet). CPU time per
unit of work is much less sensitive to them than rates are, and each ratio is taken within
one run, but caches and clock are shared too: where that column is well above 0, treat the
absolute figures as rough.

### Setup

No kernel in the path: tlsgate's client and server ports are DPDK memif servers
(\`net_memif0,role=server,socket=...\`) on sockets in the script's temp dir, and
\`tlsgate-loadgen\` attaches to them as memif clients: its clients on the one, its origins
on the other, all in one polling thread, frames in shared-memory rings. Nothing crosses a
veth, af_packet or a kernel TCP stack, so tlsgate's CPU is its own work (plus the memif
copies, which a NIC's DMA would replace). Every process runs with \`--no-huge\`, its lcores
free to run on either vCPU (\`--lcores 0@(0-1),...\`). Variants, each on a fresh tlsgate
(\`[intercept] tcp_ports = [443], mode = "tls"\`, default \`[tcp]\`, a connection log):

- **1 worker**, no inspection loop.
- **2 workers**, no inspection loop (\`dataplane.workers = 2\`). memif has no RSS: tlsgate's
  worker 0 reads the one receive queue of each port and hands worker 1 its connections'
  frames (software distribution), and each worker transmits on its own queue, so each memif
  port has 1 ring towards tlsgate and 2 back (memif takes its ring counts from the two
  ends' queue counts). \`tlsgate-loadgen --rx-queues 2\` polls both receive queues of each
  of its ports and transmits on queue 0.
- **1 worker + inspection loop**: \`inspect_out\`/\`inspect_in\` are memif servers too, joined by
  the cheapest honest box: a second \`tlsgate run\` with no \`[intercept]\`, an L2 bridge whose
  two memif client ports are attached to them. Every frame of the plaintext legs crosses it
  unchanged (it classifies each frame and looks TCP up in its flow table, as the bridge
  benchmark above measures), and it sleeps when idle. \`dpdk-testpmd --forward-mode=io\`
  would do even less per frame but spins a whole vCPU, which here would be taken from
  tlsgate and the generator; a \`net_ring\` pair inside tlsgate cannot be a box (a ring port
  receives what it sends itself), and memif will not join a server and a client of one
  socket in one process. The box's CPU is given separately, not added to tlsgate's.
EOF
  if ((${#burst_sizes[@]})); then
    cat <<EOF
- **1 worker, \`dataplane.burst_size\` = N** for N in ${burst_sizes[*]} (the default is 32),
  measured after the others in every run, each judged against the 1-worker variant of the
  same run.
EOF
  fi
  cat <<EOF

Workloads, per variant, each with fresh client addresses (198.19.N.0/24):

1. **conn**: ${connections} TLS connections opened at ${rate}/s (TLS 1.3 both legs, ECDSA
   P-256: the appliance's forged leaf to the generator's clients, the generator's origin
   certificate to the appliance's upstream client), each a 200 B request and a 2000 B
   response, then closed by the client.
2. **bulk**: ${bulk_conns} connections, each one 200 B request answered by $((bulk_each / 1000000)) MB
   (${bulk_mb} MB in all; the generator's sockets have 256 KiB buffers, tlsgate's the
   default 4 MiB).

Around each workload (from the generator's start to its end): tlsgate's utime + stime
(/proc/PID/stat, all threads), its worker thread's CPU (/proc/PID/task/TID/schedstat), the
box's CPU, the whole machine's busy CPU (/proc/stat), and the
other processes' CPU (scripts/bench-compare/othercpu.py). Per connection and per GB are that CPU divided by the
connections and by the GB relayed (10^9 plaintext bytes, decrypted once and encrypted once);
the bulk workload's 16 handshakes are left in (about 1 % of it). Per run, before the
variants, the **rustls floor** of bench-compare: \`crates/mitm/examples/tls_floor.rs --json
${floor_args[*]}\` (in memory, one thread, its CPU time): the server and client roles of the two
handshakes, the client role weighted by the share of tlsgate's upstream legs that resumed
(its connection log: the generator's origin issues stateful TLS 1.3 tickets, rustls'
default), and bare AES-256-GCM decrypt + encrypt of 16 KiB records per GB.

**2 workers against 1, over memif and in memory, from CPU time.** Over memif, the 2-worker
variant against the 1-worker one, same workloads. Wall rates cannot show the scaling: the
connection workload is paced (--rate), and the one generator thread does as much TLS work
as tlsgate. The capacity ratio comes from CPU time: with a vCPU each, 2 workers saturate
when the busier one does, so *2 ÷ 1* = (the 1 worker's CPU) / (the busier of the 2
workers' CPU) for the same load; it includes software distribution's cost (worker 0
reads and hands on every frame) and the workers' idle sleeps. In memory, with
\`crates/loadgen/examples/worker_scaling.rs\` (README's "Scaling across
workers"): 1 and then 2 threads, each owning an \`Engine\` (its own stack, sessions and TLS
context) fed by its own generator on in-memory ports, alternating for ${runs} round(s):
${scaling_conns} connections per thread with a 200 B request and a 2000 B response
(connections/s), and 4 connections per thread with one $((scaling_bulk_mb)) MB response each (GB/s).
Wall rates cannot show the scaling here: each thread also runs its generator's two TLS
roles, and the machine's 2 vCPUs are shared. The ratio comes from each thread's CPU time
instead: with a vCPU each, 2 threads finish when the busier one does, so *2 ÷ 1* =
(connections per CPU second of the busier of the 2 threads) × 2 / (connections per CPU
second of the 1 thread). It shows whether the workers share anything that slows them down
(locks, allocator, caches), not software distribution's extra cost (which the memif
ratio includes).

A run is void unless the generator reports every connection handshaken and exchanged with no
reset, timeout or TLS error, tlsgate intercepted every connection and failed none, and with
the loop every one was inspected and none failed open or closed.

### Results

EOF
  grep -v '^<!-- not met' "$tmp/table.md"
  cat <<EOF

### Reading the numbers

- **What the CPU includes.** tlsgate's process CPU: the worker, the main thread (stats,
  report) and the connection-log writer. The worker does not spin: after 256 empty polls it
  sleeps (up to \`dataplane.idle_sleep_max_us\`, 200 µs). The generator does the same TLS
  work as tlsgate and cannot keep it saturated, so tlsgate's worker idles between bursts,
  and each sleep and wake-up costs a context switch and a timer, in its CPU (the profile's
  \`finish_task_switch\` and \`clock_nanosleep\`, below). tlsgate's worker busy time
  (polls that moved frames) would leave that out, but it counts the time the thread was
  preempted inside such polls, which on this shared machine was several times its CPU: it
  is not used. The generator's CPU is not in tlsgate's (it spins on its own lcore).
- **The floor** is a lower bound in a warm loop: plain rustls and ring, no TCP, no frames, no
  buffers, no forging, no logging. tlsgate on top of it pays for smoltcp on both legs, the
  frames in and out of the memif rings (allocation, copies), rustls' unbuffered API and its
  record copies, and the connection's bookkeeping. The targets (≤ 1.3× the handshakes,
  ≤ 3× the AEAD) are issue 17's.
- **Inspection loop.** With the loop each connection has two more TCP legs in tlsgate (out
  of \`inspect_out\`, into \`inspect_in\`), so every plaintext byte crosses two more
  smoltcp sockets and four more ports (two out, two back), and the box's frames pass
  through tlsgate's rings as well.
- **memif** copies each frame into and out of the shared rings on both sides (there is no
  zero-copy mode between two DPDK processes here); a NIC's DMA would spare tlsgate one copy
  per frame, so a real port costs a little less than this.
EOF
  if compgen -G "$tmp/profile-*.txt" >/dev/null; then
    cat <<EOF

### Where the time goes (targets not met)

\`perf record -e cpu-clock -F 1999 -p PID\` on a fresh 1-worker tlsgate during one more pass of
the workload (hardware counters are not available in this VM; cpu-clock samples the CPU time
of every thread), \`perf report --no-children --sort dso,sym\`, entries of at least 1 %:
EOF
    for f in "$tmp"/profile-*.txt; do
      what="$(basename "$f" .txt)"
      what="${what#profile-}"
      printf '\n**%s workload**:\n\n```\n' "$what"
      cat "$f"
      printf '```\n'
    done
  fi
} >"$section"

mkdir -p "$(dirname "$doc")"
cp "$tmp/bench-memif.svg" "$chart"
chmod 644 "$chart"
python3 "$here/write-doc-section.py" "$doc" "$section" bench-memif
log "wrote the bench-memif section of $doc and $chart"
