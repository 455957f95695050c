#!/usr/bin/env bash
# scripts/bench-drivers.sh — tlsgate's TLS interception through the namespace lab
# with each kernel-facing DPDK driver that can reach a veth, side by side in one run.
#
# Usage: scripts/bench-drivers.sh [--write-doc] [--runs N] [--quick] [--requests N]
#          [--concurrency N] [--bulk-mb N] [--keep]   (root)
#   --runs: alternating runs per driver, the table shows medians (default 3).
#   --quick: --runs 1 --requests 500 --bulk-mb 50 (a smoke run, about 2 minutes).
#   --requests/--concurrency: ab -n/-c of the connection-rate workload (2000/20).
#   --bulk-mb: size of the bulk file in MB (10^6 bytes, default 200).
#   --keep: keep the temp dir (tlsgate logs and reports, ab/curl output).
#   --write-doc: (re)write the section between <!-- bench-drivers:begin --> and
#   <!-- bench-drivers:end --> of docs/BENCHMARKS.md.
#
# Drivers (own namespaces tgd-cli/tgd-gw/tgd-srv, client 198.18.0.1, the
# tests/lab/origin.sh nginx on 198.18.0.2 serving origin.test; the same tlsgate
# config, configs/lab.toml + [intercept] tcp_ports = [443], mode = "tls", with
# only the two [ports.*] device specs changed, by the lab's driver switch
# TLSGATE_LAB_DRIVER (lab-env.sh); alternating, median of --runs):
#   af_packet    net_af_packetN,iface=gwc0|gws0,qpairs=1,framesz=2048,blocksz=4096,framecnt=2048
#                (a TPACKET ring per port, a copy per frame each way)
#   af_xdp       net_af_xdpN,iface=gwc0|gws0,start_queue=0,queue_count=1
#                (an XDP program on the veth redirects its frames to an AF_XDP
#                socket whose UMEM is the mbuf pool itself: --no-huge memory is fine)
#   virtio_user  net_virtio_user0,path=/dev/vhost-net,iface=tgdvu0 on the client
#                port (a tap served by the kernel's vhost-net thread): probed
#                only; the row says why it did not start, or that it started
#                but is not wired into the lab (the tap would replace cli0).
# Each driver is first probed (tlsgate started alone, a ping across); one that
# does not start gets a row with tlsgate's and DPDK's own error lines.
# Workloads per run and driver, one start of tlsgate (--stats-interval 0.2):
#   rate: ab -r -s 10 -n 2000 -c 20 https://origin.test/index.html (a new TCP
#     connection and TLS handshake per request);
#   bulk: curl --http1.1 of a 200 MB random file (run 1 also checks its SHA-256).
# Around each workload: tlsgate's process CPU (utime + stime, all threads: it
# includes the poll-mode worker spinning while idle), the worker's busy time
# (its own accounting, the polls that moved frames) and the whole machine's busy
# CPU from /proc/stat (all CPUs, all processes, softirq: veth delivery and the
# XDP program count wherever the kernel charges them).
# Validity: ab without failures or non-2xx, the downloads complete (and
# byte-exact when checked), tlsgate's tcp.tls_intercepted at least the requests
# + downloads and tcp.tls_failed 0. A failed af_packet run (the lab's default,
# the reference) makes the run INVALID and the doc is not written; a failed run
# of another driver is a finding about that driver: listed under the table with
# what failed and tlsgate's port counters, its medians over the runs that worked
# (none when most failed).
#
# Installs apache2-utils, nginx-light, curl, python3 and openssl with apt-get if
# missing. Builds tlsgate (release) once and runs a private copy. Always cleans
# up (trap). Bounded: every command has a timeout, a watchdog ends the run after
# 25 min.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
doc="$root/docs/BENCHMARKS.md"

export TG_NS_CLI=tgd-cli TG_NS_GW=tgd-gw TG_NS_SRV=tgd-srv TG_NS_BOX=tgd-box TG_NS_LG=tgd-lg TG_NS_IMP=tgd-imp
# shellcheck source=scripts/lab-env.sh
. "$here/lab-env.sh"
# shellcheck source=scripts/bench-lab.sh
. "$here/bench-lab.sh"

write_doc=0 keep=0 runs=3 requests=2000 concurrency=20 bulk_mb=200
cmdline="scripts/bench-drivers.sh${*:+ $*}"
while (($#)); do
  case "$1" in
    --write-doc) write_doc=1 ;;
    --keep) keep=1 ;;
    --quick) runs=1 requests=500 bulk_mb=50 ;;
    --runs) runs="$2"; shift ;;
    --requests) requests="$2"; shift ;;
    --concurrency) concurrency="$2"; shift ;;
    --bulk-mb) bulk_mb="$2"; shift ;;
    -h|--help) sed -n '2,46p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "bench-drivers: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
[[ $(id -u) -eq 0 ]] || { echo "bench-drivers: must run as root" >&2; exit 1; }
for n in "$runs" "$requests" "$concurrency" "$bulk_mb"; do
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "bench-drivers: $n is not a positive number" >&2; exit 2; }
done

log() { echo "bench-drivers: $*" >&2; }

bench_install_missing ab:apache2-utils nginx:nginx-light curl:curl python3:python3 openssl:openssl

bench_begin bench-drivers
origin="$tmp/origin"
bulk_bytes=$((bulk_mb * 1000000))
bench_drop_large() { rm -f "$origin/www/bulk.bin"; }
bench_watchdog 1500

# --- build, CA, lab, origin ---------------------------------------------------------
bench_build_tlsgate
timeout 60 "$tmp/tlsgate" ca init --dir "$tmp/ca" >/dev/null
timeout 120 "$here/lab-up.sh" >/dev/null
timeout 60 "$root/tests/lab/origin.sh" start "$origin" origin.test
log "writing a ${bulk_mb} MB random file to the origin"
timeout 300 head -c "$bulk_bytes" /dev/urandom >"$origin/www/bulk.bin"
bulk_sha="$(timeout 120 sha256sum "$origin/www/bulk.bin" | cut -d' ' -f1)"
bench_client_hosts origin.test
url="https://origin.test/index.html"
bulk_url="https://origin.test/bulk.bin"
cat "$tmp/ca/ca.pem" "$origin/origin.crt" >"$tmp/trust.pem"

# --- the drivers' configs -----------------------------------------------------------
# configs/lab.toml with DRIVER's device specs, intercepting TLS on 443:
# af_packet and af_xdp as the lab switch makes them (TLSGATE_LAB_DRIVER,
# lab-env.sh), virtio_user on the client port with the server port on
# af_packet.
driver_config() {  # driver connection-log; prints the config
  case "$1" in
    af_packet | af_xdp) TLSGATE_LAB_DRIVER="$1" tls_config "$root/configs/lab.toml" "$2" ;;
    virtio_user)
      local client="net_virtio_user0,path=/dev/vhost-net,iface=tgdvu0,queue_size=1024"
      TLSGATE_LAB_DRIVER=af_packet tls_config "$root/configs/lab.toml" "$2" |
        sed -e "s|^device = \"[^\"]*iface=${TG_GWC_IF}[,\"].*|device = \"$client\"|" >"$tmp/virtio_user.toml"
      grep -qF "device = \"$client\"" "$tmp/virtio_user.toml" ||
        { log "configs/lab.toml changed: could not set the virtio_user device spec"; exit 1; }
      cat "$tmp/virtio_user.toml" ;;
  esac
}

# Starts tlsgate with DRIVER alone and pings across: prints nothing when it
# works, else why (tlsgate's and DPDK's error lines).
probe_driver() {  # driver
  local driver="$1" plog="$tmp/probe-$1.log" pid why=""
  driver_config "$driver" "$tmp/probe-$driver.jsonl" >"$tmp/probe-$driver.toml"
  ip netns exec "$TG_NS_GW" timeout 60 "$tmp/tlsgate" run --config "$tmp/probe-$driver.toml" >"$plog" 2>&1 &
  pid=$!
  for _ in $(seq 150); do
    grep -q '^tlsgate: running' "$plog" && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  if ! grep -q '^tlsgate: running' "$plog"; then
    why="$(grep -E '^tlsgate: error|_probe\(\)|probe failed|[Ff]ailed to|[Cc]annot' "$plog" | head -4 | tr '\n' ' ')"
    [[ -n "$why" ]] || why="did not start: $(tail -2 "$plog" | tr '\n' ' ')"
  elif [[ "$driver" == virtio_user ]]; then
    why="started, but this script does not wire its tap into the lab (it would replace cli0)"
  elif ! reachable; then
    why="started, but the client did not reach the server through it"
  fi
  stop_interrupted "$pid"
  if [[ "$driver" == virtio_user && ! -c /dev/vhost-net ]]; then
    local config_line
    config_line="$(zgrep -h '^# CONFIG_VHOST_NET is not set\|^CONFIG_VHOST_NET=' /proc/config.gz 2>/dev/null || true)"
    why="/dev/vhost-net does not exist (Linux $(uname -r)${config_line:+: $config_line}), so DPDK takes the path for a vhost-user socket: $why"
  fi
  echo "$why"
}

drivers=()
: >"$tmp/unavailable.tsv"
for driver in af_packet af_xdp virtio_user; do
  log "probing $driver"
  why="$(probe_driver "$driver")"
  if [[ -z "$why" ]]; then
    drivers+=("$driver")
  else
    log "  $driver unavailable: $why"
    printf '%s\t%s\n' "$driver" "$why" >>"$tmp/unavailable.tsv"
  fi
done
((${#drivers[@]})) || { log "no driver works"; exit 1; }

# --- measurements -------------------------------------------------------------------
# Snapshot NAME: tlsgate's CPU, the worker's busy time, the wall clock, the machine's CPU.
snap() {  # tlsgate-log name
  local busy
  sleep 0.3
  read -r busy _ <<<"$(busy_snapshot "$1")"
  echo "$(proc_cpu_seconds "$tg_pid") ${busy:-0} $(date +%s.%N) $(machine_cpu_seconds)" >"$tmp/snap-$2"
}
# prints "cpu busy wall machine" seconds between two snapshots
snap_delta() {  # name1 name2
  awk '{ c[NR] = $1; b[NR] = $2; t[NR] = $3; m[NR] = $4 }
    END { printf "%.2f %.3f %.2f %.2f\n", c[2] - c[1], b[2] - b[1], t[2] - t[1], m[2] - m[1] }' \
    "$tmp/snap-$1" "$tmp/snap-$2"
}

# Whether a run's report shows every connection intercepted and none failed.
report_valid() {  # report.json want-intercepted
  python3 - "$1" "$2" <<'PY'
import json, sys
tcp = json.load(open(sys.argv[1]))["tcp"]
ok = tcp["tls_intercepted"] >= int(sys.argv[2]) and tcp["tls_failed"] == 0
print(f'{"ok" if ok else "INVALID"} intercepted {tcp["tls_intercepted"]} failed {tcp["tls_failed"]}')
PY
}

# Each port's frame counters from a report: "role rx/tx/dropped, ...".
port_counters() {  # report.json
  python3 - "$1" <<'PY'
import json, sys
ports = json.load(open(sys.argv[1]))["ports"]
def driver(p):
    d = p.get("driver", {})
    return " ".join(f"{k} {d[k]}" for k in ("rx_missed", "rx_no_mbuf", "tx_errors") if k in d)
print(", ".join(f'{p.get("role", "?")} rx {p.get("rx", "?")} tx {p.get("tx", "?")} '
                f'dropped {p.get("dropped", "?")} {driver(p)}'.rstrip() for p in ports))
PY
}

results="$tmp/results.tsv"
: >"$results"
: >"$tmp/failures.tsv"
invalid=0
for run in $(seq "$runs"); do
  for driver in "${drivers[@]}"; do
    tag="$driver-$run" tglog="$tmp/tlsgate-$driver-$run.log"
    log "run $run/$runs, $driver"
    driver_config "$driver" "$tmp/connections-$tag.jsonl" >"$tmp/$tag.toml"
    start_tlsgate "$tmp/$tag.toml" "$tglog" --stats-interval 0.2 --report-json "$tmp/report-$tag.json"
    path_reachable "$driver"
    snap "$tglog" "$tag-r0"
    rate="$(https_rate "$tmp/ab-$tag.txt")"
    snap "$tglog" "$tag-r1"
    bulk="$(bulk_rate "$tmp/bulk-$tag.txt")"
    snap "$tglog" "$tag-b1"
    downloads=1 check=-
    if ((run == 1)); then check="$(bulk_check)"; downloads=2; fi
    wait_sessions_closed "$tglog" 125
    stop_tlsgate_reported "$tmp/report-$tag.json" "$tag"
    verdict="$(report_valid "$tmp/report-$tag.json" $((requests + downloads)))"
    if [[ "$rate" == failed || "$bulk" == failed || "$check" == MISMATCH || "$verdict" != ok* ]]; then
      failure="$rate conn/s, $bulk MB/s$( [[ "$bulk" == failed ]] && printf ' (%s)' "$(tr '\n' ' ' <"$tmp/bulk-$tag.txt")" ), SHA-256 check $check, $verdict; ports $(port_counters "$tmp/report-$tag.json")"
      if [[ "$driver" == af_packet ]]; then
        log "INVALID: $driver run $run: $failure"
        invalid=1
      else
        log "FAILED: $driver run $run: $failure"
        printf '%s\t%s\t%s\n' "$driver" "$run" "$failure" >>"$tmp/failures.tsv"
      fi
    fi
    read -r rcpu rbusy rwall rmach <<<"$(snap_delta "$tag-r0" "$tag-r1")"
    read -r bcpu bbusy bwall bmach <<<"$(snap_delta "$tag-r1" "$tag-b1")"
    # A failed workload's CPU is not a cost of its work.
    [[ "$rate" == failed ]] && rcpu=- rbusy=- rmach=-
    [[ "$bulk" == failed ]] && bcpu=- bbusy=- bmach=-
    log "  $rate conn/s, $bulk MB/s, tlsgate CPU $rcpu s (rate) $bcpu s (bulk), $verdict"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$driver" "$run" \
      "$rate" "$rcpu" "$rbusy" "$rmach" "$rwall" "$bulk" "$bcpu" "$bbusy" "$bmach" "$bwall" >>"$results"
  done
done

# --- table --------------------------------------------------------------------------
table="$tmp/table.md"
python3 - "$results" "$tmp/unavailable.tsv" "$requests" "$bulk_bytes" "$tmp/failures.tsv" >"$table" <<'PY'
import math, statistics, sys
failures = [l.rstrip("\n").split("\t", 2) for l in open(sys.argv[5]) if l.strip()]
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
unavailable = [l.rstrip("\n").split("\t", 1) for l in open(sys.argv[2]) if l.strip()]
requests, bulk_bytes = int(sys.argv[3]), int(sys.argv[4])
drivers = list(dict.fromkeys(r[0] for r in rows))
def num(text):
    try:
        return float(text)
    except ValueError:
        return float("nan")
def med(values):
    good = [v for v in values if not math.isnan(v)]
    return statistics.median(good) if good and len(good) * 2 > len(values) else float("nan")
# per driver: conn/s, MB/s, then per connection (ms) tlsgate CPU, worker busy,
# machine, then per GB (s) tlsgate CPU, worker busy, machine
m = {}
for d in drivers:
    rs = [r for r in rows if r[0] == d]
    m[d] = [med([num(r[2]) for r in rs]), med([num(r[7]) for r in rs])]
    m[d] += [med([num(r[c]) * 1000 / requests for r in rs]) for c in (3, 4, 5)]
    m[d] += [med([num(r[c]) / (bulk_bytes / 1e9) for r in rs]) for c in (8, 9, 10)]
def fmt(v, digits):
    return "-" if math.isnan(v) else f"{v:.{digits}f}"
digits = (0, 1, 2, 2, 2, 1, 1, 1)
print("| driver | new connections/s | bulk MB/s | tlsgate CPU ms/conn | worker busy ms/conn | "
      "machine CPU ms/conn | tlsgate CPU s/GB | worker busy s/GB | machine CPU s/GB |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for d in drivers:
    print(f"| {d} | " + " | ".join(fmt(v, k) for v, k in zip(m[d], digits)) + " |")
if "af_packet" in m:
    for d in drivers:
        if d == "af_packet":
            continue
        ratio = [a / b if b > 0 else float("nan") for a, b in zip(m[d], m["af_packet"])]
        print(f"| ratio {d} / af_packet | " + " | ".join(fmt(v, 2) for v in ratio) + " |")
for d, why in unavailable:
    print(f"| {d} | not available: {why.strip().replace('|', '/')} |" + " |" * 7)
print()
print("Per run (conn/s; MB/s):")
print()
for d in drivers:
    print(f"- {d}: " + " / ".join(r[2] for r in rows if r[0] == d) + "; "
          + " / ".join(r[7] for r in rows if r[0] == d))
if failures:
    print()
    print("Failed runs (left out of the medians):")
    print()
    for d, run, what in failures:
        print(f"- {d}, run {run}: {what.strip()}")
PY
cat "$table"

bench_doc_gate "$invalid"

bench_tool_versions
dpdk_version="$(dpkg-query -W -f '${Version}' librte-net-af-xdp23 2>/dev/null || dpkg-query -W -f '${Version}' dpdk 2>/dev/null || true)"
section="$tmp/section.md"
{
  cat <<EOF
## Kernel-facing drivers on veth: af_packet, af_xdp, virtio_user

Reproduce (root): \`$cmdline\` (own namespaces tgd-cli/tgd-gw/tgd-srv). Machine: $(nproc) vCPU
${cpu:-unknown CPU}${hyper:+ ($hyper guest)}, Linux $(uname -r), DPDK ${dpdk_version:-unknown}, run on $(date -u +%Y-%m-%d).

tlsgate intercepting TLS on 443 (configs/lab.toml + \`[intercept] tcp_ports = [443], mode = "tls"\`),
only the two ports' DPDK drivers changing, alternating, median of ${runs}. Workloads: ab -n ${requests}
-c ${concurrency} (a new TCP connection and TLS handshake per request) and one
$((bulk_bytes / 1000000)) MB download. "tlsgate CPU" is the process's CPU time, which includes
the poll-mode worker spinning between frames; "worker busy" is the worker's own count of the
polls that moved frames; "machine CPU" is /proc/stat's busy time of all CPUs (client, server,
veth delivery, XDP and softirq work included), per connection of the rate workload and per GB
of the download.

EOF
  cat "$table"
  cat <<'EOF'

Notes:

- af_xdp on veth runs in native XDP mode (veth has native XDP): the veth's XDP program
  redirects each frame to the AF_XDP socket of queue 0 (a veth has one active queue, so
  `start_queue=0,queue_count=1` sees every frame), in copy mode (veth has no zero-copy); the
  UMEM is the mbuf pool itself, so `--no-huge` memory works: with an af_xdp port tlsgate makes
  the pool one region of 4 KiB mbufs, all inside the UMEM the driver registers (DPDK's default
  layout left 42 % of them outside under `--no-huge`; the kernel refused those and the pool
  drained: a stall). Without a bpffs in the namespace libxdp loads its program without its
  dispatcher (harmless log lines at start).
- The lab runs on af_packet unless `TLSGATE_LAB_DRIVER=af_xdp` (scripts/lab-env.sh for the
  scripts, tests/common/lab.rs for the tests). On a veth DPDK 22.11's af_xdp opens one queue
  (it counts only combined channels; a veth reports rx and tx ones), so configurations with
  two workers stay on af_packet either way.
- virtio_user with the vhost-net backend needs /dev/vhost-net (CONFIG_VHOST_NET); without it
  DPDK takes the path for a vhost-user socket and refuses `iface=` (the row above).
- The machine is shared with other busy work (2 vCPUs): single runs vary by tens of percent;
  compare the per-run lists, and the machine CPU columns rather than the process ones.
EOF
} >"$section"
python3 "$here/write-doc-section.py" "$doc" "$section" bench-drivers
log "wrote the bench-drivers section of $doc"
