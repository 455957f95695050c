#!/usr/bin/env bash
# scripts/bench-bridge.sh — the bridge benchmark: forwarding rate of
# `tlsgate run` against `dpdk-testpmd --forward-mode=io` over the SAME DPDK
# virtual devices, on one forwarding core each, reported as a ratio.
#
# Usage: sudo scripts/bench-bridge.sh [--seconds N] [--runs N] [--write-doc] [--pcap FILE]
#
#   --seconds N   forwarding time of each measurement (default 10, 1..300)
#   --runs N      measurements per tool and scenario (default 3, 1..9); the
#                 tools alternate (testpmd, tlsgate, testpmd, tlsgate, ...)
#                 and the median of each is reported
#   --write-doc   also write the results into docs/BENCHMARKS.md, between the
#                 markers <!-- bench-bridge:begin --> / <!-- bench-bridge:end -->
#                 (appended if the markers are missing)
#   --pcap FILE   replay FILE on both ports in the frame-mix scenario instead
#                 of the generated mix (classic pcap, Ethernet, frames <= 2048 B)
#
# Scenarios (same EAL arguments, device specs, burst 32 and mbuf count for both tools):
#   null-64B  net_null0/net_null1,size=64: rx fabricates 64-byte frames
#             forever, tx frees them: pure per-frame engine overhead.
#   pcap-mix  net_pcap0/net_pcap1,rx_pcap=...,infinite_rx=1: each port loops
#             over a capture (client.pcap / server.pcap, generated at run time
#             into the temp dir with /usr/bin/python3 + scapy: 128 TCP flows,
#             2/3 IPv4 and 1/3 IPv6, handshake, request, 1..10 response
#             segments up to 1514 B, ACKs, FIN). No tx stream is given, so the
#             pcap PMD drops on tx (it counts and frees) — its only tx mode that
#             makes sense with infinite_rx; a tx_pcap would write every frame.
#
# Rates: testpmd forwarded = TX-packets summed over both ports, divided by
# the time between its `start` and `stop` commands; tlsgate forwarded =
# ports[0].tx + ports[1].tx of --report-json, divided by the worker's
# busy_ns + idle_ns. Progress goes to stderr; the Markdown table and the
# one-line ratio to stdout.
#
# Everything runs on virtual devices: no NIC, no hugepages, no network.
# Each tool invocation is bounded by `timeout`; an EXIT trap stops whatever is
# still running (by PID) and removes the temp dir.
#
# Environment (optional):
#   TLSGATE_BIN=PATH   binary to benchmark (default ${CARGO_TARGET_DIR:-target}/release/tlsgate,
#                      built with `cargo build --release -p tlsgate` if missing)
#   BENCH_KEEP=1       keep the temp dir (configs, captures, logs, JSON reports)
#   BENCH_QUIET_WAIT=S seconds the whole benchmark may spend waiting for other
#                      processes to leave the cores alone (default 300; 0: never wait)
#
# The 2 cores may be shared with other work: before each measurement the
# script waits (within BENCH_QUIET_WAIT) until other processes use < 0.25
# cores, measures from /proc/stat how many cores they used (and the
# hypervisor stole) during the measurement, and repeats it (at most twice)
# above 0.3 cores; the per-run table shows those numbers.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PY=/usr/bin/python3   # Debian's, which has python3-scapy (a pyenv/venv python may not)
DOC="$ROOT/docs/BENCHMARKS.md"
MBUFS=16383
BURST=32
EAL=(--no-huge -m 1024 --no-shconf --no-pci -l 0-1 --log-level=lib.eal:error)
READY_TIMEOUT=60      # seconds for testpmd to show its prompt
GRACE=120             # seconds a tool may run past --seconds before `timeout` stops it

say()  { printf '==> %s\n' "$*" >&2; }
warn() { printf 'bench-bridge.sh: warning: %s\n' "$*" >&2; }
die()  { printf 'bench-bridge.sh: error: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "${BASH_SOURCE[0]}"; }

SECS=10 RUNS=3 WRITE_DOC=0 PCAP_FILE=""
while (($#)); do
  case "$1" in
    --seconds) [[ $# -ge 2 ]] || die "--seconds needs a value"; SECS=$2; shift 2 ;;
    --seconds=*) SECS=${1#*=}; shift ;;
    --runs) [[ $# -ge 2 ]] || die "--runs needs a value"; RUNS=$2; shift 2 ;;
    --runs=*) RUNS=${1#*=}; shift ;;
    --pcap) [[ $# -ge 2 ]] || die "--pcap needs a file"; PCAP_FILE=$2; shift 2 ;;
    --pcap=*) PCAP_FILE=${1#*=}; shift ;;
    --write-doc) WRITE_DOC=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done
if ! [[ "$SECS" =~ ^[0-9]+$ ]] || ((SECS < 1 || SECS > 300)); then die "--seconds must be an integer in 1..300"; fi
if ! [[ "$RUNS" =~ ^[0-9]+$ ]] || ((RUNS < 1 || RUNS > 9)); then die "--runs must be an integer in 1..9"; fi
[[ $(id -u) -eq 0 ]] || die "must run as root (DPDK EAL): sudo $0"
command -v dpdk-testpmd >/dev/null || die "dpdk-testpmd not found (Debian package dpdk-dev; scripts/setup.sh installs it)"
command -v timeout >/dev/null || die "timeout (coreutils) not found"
[[ -x "$PY" ]] || die "$PY not found"
if [[ -n "$PCAP_FILE" ]]; then
  [[ -r "$PCAP_FILE" ]] || die "--pcap $PCAP_FILE: not readable"
else
  "$PY" -c 'import scapy' 2>/dev/null \
    || die "$PY has no scapy (Debian package python3-scapy; scripts/setup.sh installs it), or pass --pcap FILE"
fi

# ---------------------------------------------------------------------------
BIN="${TLSGATE_BIN:-${CARGO_TARGET_DIR:-target}/release/tlsgate}"
if [[ ! -x "$BIN" ]]; then
  [[ -z "${TLSGATE_BIN:-}" ]] || die "TLSGATE_BIN=$BIN is not an executable"
  CARGO="$(command -v cargo || echo "${HOME:-/root}/.cargo/bin/cargo")"
  [[ -x "$CARGO" ]] || die "no tlsgate binary at $BIN and no cargo to build it"
  say "Building tlsgate: cargo build --release -p tlsgate (a few minutes on 2 cores)"
  "$CARGO" build --release -p tlsgate >&2
  [[ -x "$BIN" ]] || die "cargo build finished but $BIN does not exist"
elif [[ -z "${TLSGATE_BIN:-}" ]] \
  && [[ -n "$(find crates dpdk Cargo.toml Cargo.lock -newer "$BIN" -type f -print -quit 2>/dev/null)" ]]; then
  warn "sources are newer than $BIN: it may be stale (cargo build --release -p tlsgate)"
fi

TMP="$(mktemp -d /tmp/tlsgate-bench.XXXXXX)"
CUR_PID=""   # the `timeout` wrapping the tool currently running
cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  if [[ -n "$CUR_PID" ]] && kill -0 "$CUR_PID" 2>/dev/null; then
    local child
    child="$(pgrep -P "$CUR_PID" || true)"
    kill -TERM "$CUR_PID" 2>/dev/null   # timeout passes it on to the tool
    for _ in $(seq 50); do kill -0 "$CUR_PID" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$CUR_PID" 2>/dev/null; then   # still there: timeout has not reaped the tool
      for pid in $child $CUR_PID; do kill -KILL "$pid" 2>/dev/null; done
    fi
    wait "$CUR_PID" 2>/dev/null
  fi
  exec 7>&-
  if [[ "${BENCH_KEEP:-0}" == 1 ]]; then
    echo "bench-bridge.sh: files kept in $TMP" >&2
  else
    rm -rf "$TMP"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

for name in dpdk-testpmd tlsgate; do
  if pgrep -x "$name" >/dev/null; then
    warn "another $name is running (pid $(pgrep -x "$name" | tr '\n' ' ')): it competes for the 2 cores, numbers will be low"
  fi
done
read -r LOAD1 _ </proc/loadavg
awk -v l="$LOAD1" 'BEGIN { exit !(l > 0.5) }' && warn "load average is $LOAD1 before the benchmark: the machine is not idle"

# ---------------------------------------------------------------------------
# The frame-mix captures.
MIX_DIR="$TMP/mix"
mkdir -p "$MIX_DIR"
if [[ -n "$PCAP_FILE" ]]; then
  cp -- "$PCAP_FILE" "$MIX_DIR/client.pcap"   # the path must hold no comma (devargs)
  cp -- "$PCAP_FILE" "$MIX_DIR/server.pcap"
  MIX_DESC="\`$(basename -- "$PCAP_FILE")\` replayed on both ports"
else
  say "Generating the frame mix (scapy) in $MIX_DIR"
  timeout 300 "$PY" - "$MIX_DIR" 128 <<'PYEOF'
import random, sys
from scapy.config import conf
conf.verb = 0
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw
from scapy.utils import wrpcap

out_dir, flows = sys.argv[1], int(sys.argv[2])
rng = random.Random(0x7159)          # deterministic: the same mix every run
CLI, SRV = "02:00:00:00:00:01", "02:00:00:00:00:02"
to_server, to_client = [], []        # replayed by the client / server port

def frame(src, dst, l3, l4, payload):
    raw = bytes(Ether(src=src, dst=dst) / l3 / l4 / Raw(payload)) if payload \
        else bytes(Ether(src=src, dst=dst) / l3 / l4)
    return raw + bytes(max(0, 60 - len(raw)))    # Ethernet minimum (no FCS)

for n in range(flows):
    if n % 3 == 2:
        cip, sip, mss = f"2001:2::1:{n:x}", "2001:2::2", 1440
        l3 = lambda s, d: IPv6(src=s, dst=d, hlim=64)
    else:
        cip, sip, mss = f"198.18.{1 + n // 250}.{1 + n % 250}", "198.18.0.2", 1460
        l3 = lambda s, d: IP(src=s, dst=d, ttl=64, id=n)
    sport, dport = 40000 + n, 443
    cs, ss = rng.getrandbits(32), rng.getrandbits(32)
    syn_opts = [("MSS", mss), ("SAckOK", b""), ("Timestamp", (n, 0)), ("NOP", None), ("WScale", 7)]

    def c(flags, data=b"", opts=None):
        to_server.append(frame(CLI, SRV, l3(cip, sip), TCP(sport=sport, dport=dport, flags=flags,
                               seq=cs % 2**32, ack=ss % 2**32 if "A" in flags else 0,
                               window=64240, options=opts or []), data))

    def s(flags, data=b"", opts=None):
        to_client.append(frame(SRV, CLI, l3(sip, cip), TCP(sport=dport, dport=sport, flags=flags,
                               seq=ss % 2**32, ack=cs % 2**32, window=65160, options=opts or []), data))

    c("S", opts=syn_opts); cs += 1
    s("SA", opts=syn_opts); ss += 1
    c("A")
    request = rng.randbytes(rng.randint(120, 600))
    c("PA", request); cs += len(request)
    segments = rng.randint(1, 10)
    for i in range(segments):
        last = i == segments - 1
        data = rng.randbytes(rng.randint(40, mss) if last else mss)
        s("PA" if last else "A", data); ss += len(data)
        if i % 2 == 1 or last:
            c("A")
    c("FA"); cs += 1
    s("FA"); ss += 1
    c("A")

wrpcap(f"{out_dir}/client.pcap", [Ether(f) for f in to_server])
wrpcap(f"{out_dir}/server.pcap", [Ether(f) for f in to_client])
PYEOF
  MIX_DESC="generated: 128 TCP flows (2/3 IPv4, 1/3 IPv6) — client port replays the client's frames, server port the server's"
fi

# Frames, mean and range of frame sizes of a classic pcap file.
pcap_stats() {
  "$PY" - "$1" <<'PYEOF'
import struct, sys
data = open(sys.argv[1], "rb").read()
magic = data[:4]
order = {b"\xd4\xc3\xb2\xa1": "<", b"\x4d\x3c\xb2\xa1": "<", b"\xa1\xb2\xc3\xd4": ">", b"\xa1\xb2\x3c\x4d": ">"}.get(magic)
if order is None:
    print("0 0 0 0 not-classic-pcap"); sys.exit()
sizes, off = [], 24
while off + 16 <= len(data):
    caplen = struct.unpack(order + "I", data[off + 8:off + 12])[0]
    sizes.append(caplen)
    off += 16 + caplen
print(len(sizes), round(sum(sizes) / max(1, len(sizes))), min(sizes, default=0), max(sizes, default=0), "ok")
PYEOF
}
read -r C_FRAMES C_MEAN C_MIN C_MAX C_OK < <(pcap_stats "$MIX_DIR/client.pcap")
read -r S_FRAMES S_MEAN S_MIN S_MAX S_OK < <(pcap_stats "$MIX_DIR/server.pcap")
[[ "$C_OK" == ok && "$S_OK" == ok ]] || die "the frame-mix capture is not a classic pcap file (pcapng is not supported by net_pcap)"
((C_FRAMES > 0 && S_FRAMES > 0)) || die "the frame-mix capture holds no frames"
((C_MAX <= 2048 && S_MAX <= 2048)) || die "frames over 2048 B need chained mbufs, which net_pcap's infinite_rx refuses"
((C_FRAMES + S_FRAMES + 4096 < MBUFS)) || die "the captures hold too many frames for $MBUFS mbufs (infinite_rx keeps them all in the pool)"
MIX_FRAMES="client.pcap $C_FRAMES frames, $C_MIN–$C_MAX B, mean $C_MEAN B; server.pcap $S_FRAMES frames, $S_MIN–$S_MAX B, mean $S_MEAN B"
say "Frame mix: $MIX_FRAMES"

# ---------------------------------------------------------------------------
SCENARIOS=(null-64B pcap-mix)
declare -A DEV_CLIENT DEV_SERVER DESC
DEV_CLIENT[null-64B]="net_null0,size=64"
DEV_SERVER[null-64B]="net_null1,size=64"
DESC[null-64B]="\`net_null\` pair, 64-byte frames fabricated by the driver, their bytes never written (all zero here: ethertype 0, so tlsgate parses the Ethernet header only)"
DEV_CLIENT[pcap-mix]="net_pcap0,rx_pcap=$MIX_DIR/client.pcap,infinite_rx=1"
DEV_SERVER[pcap-mix]="net_pcap1,rx_pcap=$MIX_DIR/server.pcap,infinite_rx=1"
DESC[pcap-mix]="\`net_pcap\` pair, \`infinite_rx=1\`, tx dropped by the driver; $MIX_DESC ($MIX_FRAMES)"

toml_list() { local out="" a; for a in "$@"; do out+="${out:+, }\"$a\""; done; printf '[%s]' "$out"; }
for sc in "${SCENARIOS[@]}"; do
  cat >"$TMP/$sc.toml" <<EOF
[dataplane]
eal_args = $(toml_list "${EAL[@]}")
workers = 1
burst_size = $BURST
mbufs = $MBUFS
[ports.client]
device = "${DEV_CLIENT[$sc]}"
[ports.server]
device = "${DEV_SERVER[$sc]}"
EOF
  "$BIN" check --config "$TMP/$sc.toml" >/dev/null || die "tlsgate rejects the generated config $TMP/$sc.toml"
done

# tlsgate's worker is a non-EAL thread: it runs on whatever CPUs it inherits
# (as of this writing the main lcore's, CPU 0, not lcore 1). Find out with a
# short probe run, and put testpmd's forwarding lcore on the same CPU, so that
# both forwarders share one CPU's neighbours (interrupts, other tenants).
probe_worker_cpus() {
  local cpus="" i pid task rc=0
  TLSGATE_LOG=warn timeout -s TERM -k 10 30 "$BIN" run --config "$TMP/null-64B.toml" --duration 2 \
    >"$TMP/probe.log" 2>&1 &
  CUR_PID=$!
  for ((i = 0; i < 100 && ${#cpus} == 0; i++)); do
    sleep 0.1
    for pid in $(pgrep -P "$CUR_PID" || true); do   # tlsgate, the child of timeout
      for task in /proc/"$pid"/task/*; do
        [[ "$(cat "$task/comm" 2>/dev/null)" == tlsgate-worker* ]] || continue   # comm: 15 chars
        cpus="$(awk '/^Cpus_allowed_list:/ { print $2 }' "$task/status" 2>/dev/null)"
      done
    done
  done
  wait "$CUR_PID" || rc=$?
  CUR_PID=""
  ((rc == 0)) || { show_log "$TMP/probe.log"; die "the tlsgate probe run failed (status $rc)"; }
  echo "$cpus"
}
WORKER_CPUS="$(probe_worker_cpus)"
TESTPMD_EAL=("${EAL[@]}")
case "$WORKER_CPUS" in
  0) TESTPMD_EAL+=(--main-lcore 1); TESTPMD_FWD_CPU=0 ;;   # forwarding lcore 0 = CPU 0
  1) TESTPMD_FWD_CPU=1 ;;                                   # the default: main 0, forwarding 1
  *) TESTPMD_FWD_CPU=1; warn "tlsgate's worker may run on CPUs '${WORKER_CPUS:-?}': testpmd forwards on CPU 1" ;;
esac
say "tlsgate's worker thread runs on CPU(s) ${WORKER_CPUS:-?}; testpmd's forwarding lcore goes on CPU $TESTPMD_FWD_CPU"

RESULTS="$TMP/results.tsv"   # scenario tool run forwarded seconds busy% other-cores stolen-cores
ATTEMPT="$TMP/attempt.tsv"   # the same, for the measurement in progress
: >"$RESULTS"

show_log() { echo "---- $1 (last 25 lines) ----" >&2; tail -n 25 "$1" >&2 || true; }

# This machine's 2 cores may be shared with other work (builds, other
# benchmarks): every measurement waits until the machine is quiet, records how
# many cores other processes used (and the hypervisor stole) while it ran,
# and is repeated (at most twice) if that was more than DISTURBED cores.
NCPU="$(nproc)"
QUIET_MAX=0.25                            # cores busy with other work: "quiet"
DISTURBED=0.30                            # other + stolen cores during a run: "disturbed"
QUIET_BUDGET="${BENCH_QUIET_WAIT:-300}"   # seconds of waiting for quiet, whole benchmark
# "busy steal total" jiffies over all CPUs since boot.
cpu_jiffies() { awk '/^cpu / { t = 0; for (i = 2; i <= 9; i++) t += $i; print $2 + $3 + $4 + $7 + $8, $9, t; exit }' /proc/stat; }
# "other<TAB>stolen" cores between two cpu_jiffies readings; $3 = cores our own tool kept busy.
cpu_load() {
  awk -v a="$1" -v b="$2" -v n="$NCPU" -v ours="$3" 'BEGIN {
    split(a, x, " "); split(b, y, " "); t = y[3] - x[3]; if (t <= 0) t = 1
    o = (y[1] - x[1]) / t * n - ours; if (o < 0) o = 0
    printf "%.2f\t%.2f", o, (y[2] - x[2]) / t * n }'
}
# Quiet: other processes use < QUIET_MAX cores, and no other DPDK program
# (tlsgate, testpmd: pinned to the same CPUs, they wake up thousands of times
# a second even when idle) is running. Nothing of ours runs when this is called.
wait_quiet() {
  local a b load others said=0
  while :; do
    a="$(cpu_jiffies)"; sleep 1; b="$(cpu_jiffies)"
    load="$(cpu_load "$a" "$b" 0 | cut -f1)"
    others="$({ pgrep -x tlsgate || true; pgrep -x dpdk-testpmd || true; } | tr '\n' ' ')"
    others="${others% }"
    if [[ -z "$others" ]] && awk -v l="$load" -v m="$QUIET_MAX" 'BEGIN { exit !(l <= m) }'; then
      return 0
    fi
    if ((QUIET_BUDGET <= 0)); then
      warn "not quiet ($load cores busy with other processes${others:+, other DPDK programs: pid $others}); measuring anyway (BENCH_QUIET_WAIT used up)"
      return 0
    fi
    ((said)) || say "        waiting for the machine to be quiet: $load cores busy with other processes${others:+, other DPDK programs running (pid $others)}"
    said=1
    sleep 4
    QUIET_BUDGET=$((QUIET_BUDGET - 5))
  done
}

# testpmd, interactive on a FIFO: wait for the prompt, `start`, sleep, `stop`, `quit`.
run_testpmd() {
  local sc=$1 run=$2 log="$TMP/$1.testpmd.$2.log" fifo="$TMP/testpmd.fifo" rc=0 t0 t1 j0 j1 i
  rm -f "$fifo"
  mkfifo "$fifo"
  exec 7<>"$fifo"
  timeout -s TERM -k 10 $((SECS + GRACE)) dpdk-testpmd "${TESTPMD_EAL[@]}" \
    --vdev "${DEV_CLIENT[$sc]}" --vdev "${DEV_SERVER[$sc]}" -- \
    -i --forward-mode=io --nb-cores=1 --burst="$BURST" --total-num-mbufs="$MBUFS" --no-flush-rx \
    <&7 >"$log" 2>&1 &
  CUR_PID=$!
  for ((i = 0; ; i++)); do
    grep -q 'testpmd>' "$log" && break
    kill -0 "$CUR_PID" 2>/dev/null || { show_log "$log"; die "testpmd exited before its prompt ($sc)"; }
    ((i < READY_TIMEOUT * 10)) || { show_log "$log"; die "testpmd showed no prompt within ${READY_TIMEOUT}s ($sc)"; }
    sleep 0.1
  done
  j0="$(cpu_jiffies)"
  t0=$(date +%s%N)
  echo start >&7
  sleep "$SECS"
  echo stop >&7
  t1=$(date +%s%N)
  j1="$(cpu_jiffies)"
  echo quit >&7
  wait "$CUR_PID" || rc=$?
  CUR_PID=""
  exec 7>&-
  rm -f "$fifo"
  ((rc == 0)) || { show_log "$log"; die "testpmd exited with status $rc ($sc)"; }
  # Per-port blocks, then the accumulated one; "TX-packets: N  TX-dropped: M ...".
  local parsed tx dropped acc
  parsed=$(awk '/Forward statistics for port/ { p = 1; next }
                p && /TX-packets:/ { tx += $2; drop += $4; p = 0 }
                /Accumulated forward statistics/ { a = 1; next }
                a && /TX-packets:/ { acc = $2; a = 0 }
                END { printf "%d %d %d\n", tx, drop, acc }' "$log")
  read -r tx dropped acc <<<"$parsed"
  ((tx > 0)) || { show_log "$log"; die "no forward statistics in the testpmd output ($sc)"; }
  ((acc == 0 || acc == tx)) || warn "testpmd: per-port TX sum $tx != accumulated $acc ($sc run $run)"
  ((dropped == 0)) || warn "testpmd dropped $dropped frames on tx ($sc run $run)"
  # Its forwarding lcore spins (1 core); the main lcore blocks on the command line.
  printf '%s\ttestpmd\t%s\t%s\t%s\t-\t%s\n' "$sc" "$run" "$tx" \
    "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.6f", (b - a) / 1e9 }')" \
    "$(cpu_load "$j0" "$j1" 1)" >"$ATTEMPT"
}

run_tlsgate() {
  local sc=$1 run=$2 log="$TMP/$1.tlsgate.$2.log" json="$TMP/$1.tlsgate.$2.json" rc=0 j0 j1
  rm -f "$json"
  j0="$(cpu_jiffies)"
  TLSGATE_LOG="${TLSGATE_LOG:-warn}" timeout -s TERM -k 10 $((SECS + GRACE)) \
    "$BIN" run --config "$TMP/$sc.toml" --duration "$SECS" --report-json "$json" >"$log" 2>&1 &
  CUR_PID=$!
  wait "$CUR_PID" || rc=$?
  CUR_PID=""
  j1="$(cpu_jiffies)"
  if ((rc != 0)) || [[ ! -s "$json" ]]; then show_log "$log"; die "tlsgate exited with status $rc ($sc)"; fi
  # Its worker spins (1 core); start-up and shutdown also keep about one core busy.
  "$PY" - "$json" "$sc" "$run" "$(cpu_load "$j0" "$j1" 1)" >"$ATTEMPT" <<'PYEOF'
import json, sys
report, sc, run, load = json.load(open(sys.argv[1])), sys.argv[2], sys.argv[3], sys.argv[4]
ports, workers = report["ports"], report["workers"]
forwarded = ports[0]["tx"] + ports[1]["tx"]
busy = sum(w["busy_ns"] for w in workers)
total = sum(w["busy_ns"] + w["idle_ns"] for w in workers)
for p in ports:
    lost = p["dropped"] + p["driver"]["rx_missed"]
    if lost or p["malformed"]:
        print(f"bench-bridge.sh: warning: tlsgate {p['role']} port: dropped {p['dropped']}, "
              f"rx_missed {p['driver']['rx_missed']}, malformed {p['malformed']} ({sc} run {run})",
              file=sys.stderr)
print(f"{sc}\ttlsgate\t{run}\t{forwarded}\t{total / 1e9:.6f}\t{100 * busy / max(1, total):.1f}\t{load}")
PYEOF
}

# One measurement of `tool` (testpmd|tlsgate), repeated if it was disturbed.
measure() {
  local tool=$1 sc=$2 run=$3 attempt forwarded seconds other stolen
  for attempt in 1 2 3; do
    wait_quiet
    "run_$tool" "$sc" "$run"
    IFS=$'\t' read -r _ _ _ forwarded seconds _ other stolen <"$ATTEMPT"
    awk -v o="$other" -v s="$stolen" -v m="$DISTURBED" 'BEGIN { exit !(o + s <= m) }' && break
    if ((attempt < 3)); then
      warn "$tool $sc run $run: other processes used $other cores, $stolen stolen: repeating it"
    else
      warn "$tool $sc run $run: other processes used $other cores, $stolen stolen: kept (marked disturbed)"
    fi
  done
  cat "$ATTEMPT" >>"$RESULTS"
  say "        $tool: $(awk -v f="$forwarded" -v s="$seconds" 'BEGIN { printf "%.2f", f / s / 1e6 }') Mpps (other processes: $other cores, stolen: $stolen)"
}

TOTAL=$(( ${#SCENARIOS[@]} * RUNS * 2 ))
N=0
for sc in "${SCENARIOS[@]}"; do
  for ((run = 1; run <= RUNS; run++)); do
    N=$((N + 1)); say "[$N/$TOTAL] $sc run $run/$RUNS: dpdk-testpmd io, ${SECS}s"
    measure testpmd "$sc" "$run"
    N=$((N + 1)); say "[$N/$TOTAL] $sc run $run/$RUNS: tlsgate run, ${SECS}s"
    measure tlsgate "$sc" "$run"
  done
done

# ---------------------------------------------------------------------------
# Summary: medians, the table, the ratio line; optionally the doc section.
CPU_MODEL="$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
DPDK_VERSION="$(pkg-config --modversion libdpdk 2>/dev/null || dpkg-query -W -f='${Version}' dpdk 2>/dev/null || echo unknown)"
COMMIT="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [[ -n "$(git -C "$ROOT" status --porcelain -- crates dpdk Cargo.toml Cargo.lock 2>/dev/null)" ]]; then
  COMMIT+=" + uncommitted changes in crates/ or dpdk/"
fi
COMMAND="sudo scripts/bench-bridge.sh --seconds $SECS --runs $RUNS${PCAP_FILE:+ --pcap $PCAP_FILE}"
TESTPMD_EAL_TEXT="${TESTPMD_EAL[*]}"
export TESTPMD_EAL_TEXT WORKER_CPUS TESTPMD_FWD_CPU
export DISTURBED RESULTS SECS RUNS CPU_MODEL DPDK_VERSION COMMIT COMMAND DOC WRITE_DOC MBUFS BURST
EAL_TEXT="${EAL[*]}"
NPROC="$(nproc)"
KERNEL="$(uname -r)"
export EAL_TEXT NPROC KERNEL
export DESC_NULL="${DESC[null-64B]}" DESC_MIX="${DESC[pcap-mix]}"
"$PY" - <<'PYEOF'
import os, re, statistics, sys, time

env = os.environ
rows = [line.rstrip("\n").split("\t") for line in open(env["RESULTS"]) if line.strip()]
scenarios = [("null-64B", env["DESC_NULL"]), ("pcap-mix", env["DESC_MIX"])]

def runs(sc, tool):
    return sorted((int(r[2]), int(r[3]) / float(r[4]) / 1e6, r[5], float(r[6]), float(r[7]))
                  for r in rows if r[0] == sc and r[1] == tool)

def fmt(values):
    med = statistics.median(values)
    return f"{med:.2f}" if len(values) == 1 else f"{med:.2f} ({min(values):.2f}–{max(values):.2f})"

summary = ["| scenario | testpmd io, Mpps | tlsgate, Mpps | tlsgate / testpmd | tlsgate worker busy |",
           "| --- | ---: | ---: | ---: | ---: |"]
raw = ["| scenario | run | testpmd Mpps | tlsgate Mpps | ratio of the pair | other processes / stolen, cores (testpmd; tlsgate) |",
       "| --- | ---: | ---: | ---: | ---: | --- |"]
disturbed_limit = float(env["DISTURBED"])
disturbed = 0
ratios = []
for sc, _ in scenarios:
    tp, tg = runs(sc, "testpmd"), runs(sc, "tlsgate")
    tp_rates, tg_rates = [r[1] for r in tp], [r[1] for r in tg]
    ratio = statistics.median(tg_rates) / statistics.median(tp_rates)
    busy = statistics.median(float(r[2]) for r in tg)
    ratios.append(f"{sc} {ratio:.2f}")
    summary.append(f"| {sc} | {fmt(tp_rates)} | {fmt(tg_rates)} | **{ratio:.2f}** | {busy:.1f} % |")
    for (n, a, _, ao, as_), (_, b, _, bo, bs) in zip(tp, tg):
        mark = ""
        for other, stolen in ((ao, as_), (bo, bs)):
            if other + stolen > disturbed_limit:
                disturbed += 1
                mark = " †"
        raw.append(f"| {sc} | {n}{mark} | {a:.2f} | {b:.2f} | {b / a:.2f} | {ao:.2f} / {as_:.2f}; {bo:.2f} / {bs:.2f} |")

runs_text = f"median of {env['RUNS']} × {env['SECS']} s" if env["RUNS"] != "1" else f"1 × {env['SECS']} s"
ratio_line = f"tlsgate/testpmd forwarding ratio ({runs_text}, 1 core each): " + ", ".join(ratios)
legend = ("Mpps: median (min–max) of the runs; forwarded frames are counted on both ports' tx, so a 2-port "
          "bridge's Mpps is the sum of both directions.")
quiet_note = (f"Each measurement waited for the machine to be quiet and was repeated (at most twice) when other "
              f"processes used, or the hypervisor stole, more than {disturbed_limit:.2f} cores while it ran; "
              + (f"{disturbed} measurement(s) marked † stayed disturbed." if disturbed else "no measurement kept here was disturbed."))

print("\n".join(summary))
print()
print(ratio_line)
if disturbed:
    print(f"bench-bridge.sh: warning: {disturbed} measurement(s) disturbed by other processes (see the per-run table)", file=sys.stderr)

if env["WRITE_DOC"] == "1":
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    section = "\n".join([
        "<!-- bench-bridge:begin -->",
        "<!-- Generated by scripts/bench-bridge.sh --write-doc: edits between these markers are overwritten. -->",
        "",
        f"Run {stamp} on commit `{env['COMMIT']}`: {env['NPROC']} × {env['CPU_MODEL']}, kernel {env['KERNEL']}, "
        f"DPDK {env['DPDK_VERSION']}; {env['RUNS']} run{'s' if env['RUNS'] != '1' else ''} × {env['SECS']} s per tool and scenario, alternating.",
        "",
        "```sh",
        env["COMMAND"] + " --write-doc",
        "```",
        "",
        *summary,
        "",
        f"**{ratio_line}**",
        "",
        legend,
        "",
        "Scenarios:",
        "",
        *[f"- **{sc}**: {desc}." for sc, desc in scenarios],
        "",
        f"Both tools: EAL `{env['EAL_TEXT']}`, burst {env['BURST']}, {env['MBUFS']} mbufs, one forwarding thread. "
        f"testpmd: EAL `{env['TESTPMD_EAL_TEXT']}`, `-i --forward-mode=io --nb-cores=1 --no-flush-rx`, rate = "
        "TX-packets of both ports / time between `start` and `stop`. tlsgate: `run --duration`, rate = "
        "`ports[0].tx + ports[1].tx` / (`busy_ns + idle_ns`) of the worker. "
        f"tlsgate's worker thread ran on CPU {env['WORKER_CPUS'] or '?'} (found by a probe run), so testpmd's "
        f"forwarding lcore was put on CPU {env['TESTPMD_FWD_CPU']}.",
        "",
        "Every run:",
        "",
        *raw,
        "",
        quiet_note,
        "<!-- bench-bridge:end -->",
    ])
    path = env["DOC"]
    try:
        text = open(path).read()
    except FileNotFoundError:
        text = "# Benchmarks\n"
    pattern = re.compile(r"<!-- bench-bridge:begin -->.*?<!-- bench-bridge:end -->", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n## Bridge forwarding rate: tlsgate vs. testpmd\n\n" + section + "\n"
    tmp = path + ".tmp"
    with open(tmp, "w") as out:
        out.write(text)
    os.replace(tmp, path)
    print(f"bench-bridge.sh: wrote the results into {path}", file=sys.stderr)
PYEOF
