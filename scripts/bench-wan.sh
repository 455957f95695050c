#!/usr/bin/env bash
# scripts/bench-wan.sh — one HTTPS download per point over a path with a round
# trip and loss, for three paths in ONE run (issue 13):
#   direct    a Linux bridge br0 in tgw-gw joining gwc0 and gws0 (kernel
#             forwarding; the end hosts' TCP end to end)
#   sslsplit  SSLsplit, transparent and inline (bench-compare.sh's path (b):
#             the bridge with netfilter, an nftables redirect to SSLsplit)
#   tlsgate   tlsgate intercepting TLS on 443 (configs/lab.toml + [intercept]
#             mode "tls"; every [tcp] setting at its default)
# Grid: RTT 0 / 10 / 50 / 150 ms and loss 0 / 0.1 / 1 %, added by the
# impairment element (scripts/lab-impair.sh) on the SERVER link (tgw-gw/gws0 <->
# tgw-srv/srv0, between the interceptor and the origin): half the RTT as delay
# and the loss rate each way. The element stays in the path at 0 ms / 0 %.
# Per grid point: scripts/lab-up.sh, the origin (tests/lab/origin.sh, nginx
# serving an --mb file), the element, then each path in turn (alternating,
# --runs times); every download is checked byte for byte (SHA-256).
# Then, unless turned off:
#   --no-element: skip the element's own throughput: iperf3 (kernel TCP,
#     download, 8 s) client <-> server through the bridge path, first on the
#     plain veths, then with the element (no impairment) on the server link;
#   --no-memory: skip the memory per idle intercepted connection at the
#     default settings: scripts/bench-concurrency.sh --counts --hold-count N
#     with --buffers = the default tcp.rx_buffer/tx_buffer (tlsgate-loadgen
#     opens N TLS connections, one exchange each, and holds them idle).
#
# Usage: scripts/bench-wan.sh [--mb N] [--timeout S] [--runs N] [--paths "direct sslsplit tlsgate"]
#          [--rtts "0 10 50 150"] [--losses "0 0.1 1"] [--hold-count N] [--no-memory]
#          [--no-element] [--keep] [--write-doc]
#   (root; own namespaces tgw-cli/tgw-gw/tgw-srv/tgw-box/tgw-lg and the element's
#   tgw-imp-server, so it runs beside the tests and the other benchmarks)
#   --mb: the download's size in MB (10^6 B, default 20);
#   --timeout: seconds one download may take (default 90); one that does not
#     finish is recorded as a failure (its partial rate is shown), never waited for;
#   --hold-count: idle connections for the memory measurement (default 3000);
#   --keep: keep the temp dir (logs, per-download records);
#   --write-doc: (re)write the section between <!-- bench-wan:begin --> and
#     <!-- bench-wan:end --> of docs/BENCHMARKS.md and the chart docs/bench-wan.svg.
# Builds tlsgate and tlsgate-impair (release) and runs private copies. Always
# cleans up (trap: processes, bridge, nftables, scripts/lab-down.sh). Bounded:
# every command has a timeout and a watchdog ends the run.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
doc="$root/docs/BENCHMARKS.md"
chart="$root/docs/bench-wan.svg"

export TG_NS_CLI=tgw-cli TG_NS_GW=tgw-gw TG_NS_SRV=tgw-srv TG_NS_BOX=tgw-box TG_NS_LG=tgw-lg TG_NS_IMP=tgw-imp
# shellcheck source=scripts/lab-env.sh
. "$here/lab-env.sh"
# shellcheck source=scripts/bench-lab.sh
. "$here/bench-lab.sh"

mb=20 dl_timeout=90 runs=1 paths="direct sslsplit tlsgate" rtts="0 10 50 150" losses="0 0.1 1"
hold_count=3000 memory=1 element=1 keep=0 write_doc=0
cmdline="scripts/bench-wan.sh${*:+ $*}"
while (($#)); do
  case "$1" in
    --mb) mb="$2"; shift ;;
    --timeout) dl_timeout="$2"; shift ;;
    --runs) runs="$2"; shift ;;
    --paths) paths="$2"; shift ;;
    --rtts) rtts="$2"; shift ;;
    --losses) losses="$2"; shift ;;
    --hold-count) hold_count="$2"; shift ;;
    --no-memory) memory=0 ;;
    --no-element) element=0 ;;
    --keep) keep=1 ;;
    --write-doc) write_doc=1 ;;
    -h|--help) sed -n '2,44p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "bench-wan: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
[[ $(id -u) -eq 0 ]] || { echo "bench-wan: must run as root" >&2; exit 1; }
for n in "$mb" "$dl_timeout" "$runs" "$hold_count" $rtts; do
  [[ "$n" =~ ^[0-9]+$ ]] || { echo "bench-wan: $n is not a number" >&2; exit 2; }
done
for l in $losses; do
  [[ "$l" =~ ^[0-9]+(\.[0-9]+)?$ ]] || { echo "bench-wan: loss $l is not a percentage" >&2; exit 2; }
done
for p in $paths; do
  [[ "$p" =~ ^(direct|sslsplit|tlsgate)$ ]] || { echo "bench-wan: unknown path $p" >&2; exit 2; }
done

log() { echo "bench-wan: $(date -u +%H:%M:%S) $*" >&2; }

bench_install_missing nginx:nginx-light curl:curl sslsplit:sslsplit nft:nftables \
  conntrack:conntrack iperf3:iperf3 python3:python3 openssl:openssl

bench_begin bench-wan
origin="$tmp/origin"
nft_table=bench_wan
bulk_bytes=$((mb * 1000000))
bench_drop_large() { rm -f "$origin/www/bulk.bin"; }

# Bounded: every download at its limit, plus set-up per point, the element and
# the memory measurement.
n_points=$(( $(wc -w <<<"$rtts") * $(wc -w <<<"$losses") ))
limit=$(( n_points * (runs * $(wc -w <<<"$paths") * (dl_timeout + 40) + 60) + 1800 ))
bench_watchdog "$limit"
log "$n_points points x $(wc -w <<<"$paths") paths x $runs runs of $mb MB; at most $((limit / 60)) min"

# --- build, CA, keys ------------------------------------------------------------------
bench_build_tlsgate
log "building tlsgate-impair (release)"
(cd "$root" && timeout 1200 cargo build --release --quiet -p tlsgate --bin tlsgate-impair)
cp "$root/target/release/tlsgate-impair" "$tmp/tlsgate-impair"
export TG_IMPAIR_BIN="$tmp/tlsgate-impair"
timeout 60 "$tmp/tlsgate" ca init --dir "$tmp/ca" >/dev/null
timeout 30 openssl ecparam -name prime256v1 -genkey -noout -out "$tmp/leaf.key" 2>/dev/null
mkdir -p "$origin/www"
log "writing a $mb MB random file for the origin"
timeout 300 head -c "$bulk_bytes" /dev/urandom >"$tmp/bulk.bin"
bulk_sha="$(sha256sum "$tmp/bulk.bin" | cut -d' ' -f1)"
commit="$(git -C "$root" rev-parse --short HEAD)"
git -C "$root" diff --quiet HEAD -- crates Cargo.toml Cargo.lock || commit+=" + uncommitted changes in crates/"

# The impairment spec of one direction: half the round trip, the loss rate.
impair_spec() {  # rtt-ms loss-%
  local spec=""
  (($1 > 0)) && spec="delay $(awk -v r="$1" 'BEGIN { printf "%g", r / 2 }')ms"
  [[ "$2" != 0 ]] && spec+="${spec:+ }loss $2%"
  echo "$spec"
}

# A fresh lab with the origin and, on the server link, the element.
lab_with_element() {  # spec ("" = the element with no impairment; "none" = no element)
  timeout 120 "$here/lab-up.sh" >/dev/null
  for f in iptables ip6tables arptables; do
    ip netns exec "$TG_NS_GW" sysctl -qw "net.bridge.bridge-nf-call-$f=0" 2>/dev/null || true
  done
  timeout 60 "$root/tests/lab/origin.sh" start "$origin" origin.test >/dev/null
  ln -sf "$tmp/bulk.bin" "$origin/www/bulk.bin"
  [[ "$1" == none ]] || timeout 60 "$here/lab-impair.sh" server "$1" "$1" >/dev/null
}

# The origin's kernel TCP counters (its namespace's /proc/net/snmp and netstat):
# "retrans=N rto=N sack_recoveries=N reno_recoveries=N".
origin_tcp() {
  ip netns exec "$TG_NS_SRV" cat /proc/net/snmp /proc/net/netstat | awk '
    $1 ~ /^(Tcp|TcpExt):$/ { if (!($1 in names)) { names[$1] = 1; for (i = 2; i <= NF; i++) h[$1, i] = $i; next }
                             for (i = 2; i <= NF; i++) v[h[$1, i]] = $i }
    END { printf "retrans=%d rto=%d sack_recoveries=%d reno_recoveries=%d\n", v["RetransSegs"],
          v["TCPTimeouts"], v["TCPSackRecovery"], v["TCPRenoRecovery"] }'
}
# The difference of two origin_tcp outputs, in the same form.
origin_tcp_delta() {  # before after
  paste -d' ' <(tr ' ' '\n' <<<"$1") <(tr ' ' '\n' <<<"$2") |
    awk -F'[ =]' '{ printf "%s%s=%d", (NR > 1 ? " " : ""), $1, $4 - $2 } END { print "" }'
}

# One download from the client namespace, checked byte for byte: appends a
# record to points.kv (with the origin's retransmissions meanwhile) and prints
# "status MB/s".
download() {  # rtt loss path run trust
  local out="$tmp/curl-$1-$2-$3-$4.txt" sum status code size secs rc=0 tcp0 tcp1
  tcp0="$(origin_tcp)"
  sum="$(timeout $((dl_timeout + 30)) ip netns exec "$TG_NS_CLI" curl --http1.1 -sS --cacert "$5" \
    --resolve "origin.test:443:$TG_SRV_V4" --max-time "$dl_timeout" -o - \
    -w '%{stderr}%{http_code} %{size_download} %{time_total}\n' https://origin.test/bulk.bin \
    2>"$out" | sha256sum | cut -d' ' -f1)" || rc=$?
  read -r code size secs < <(tail -1 "$out") || true
  [[ "$secs" =~ ^[0-9.]+$ ]] || { code=000 size=0 secs=$dl_timeout; }
  if [[ "$code" == 200 && "$size" == "$bulk_bytes" && "$sum" == "$bulk_sha" ]]; then status=ok
  elif [[ "$code" == 200 && "$size" == "$bulk_bytes" ]]; then status=corrupt
  elif grep -q 'timed out' "$out"; then status=timeout
  else status=failed
  fi
  tcp1="$(origin_tcp)"
  [[ $status == ok ]] || log "  $3: $status (rc $rc): $(head -c 300 "$out" | tr '\n' ' ')"
  echo "rtt=$1 loss=$2 path=$3 run=$4 status=$status bytes=${size:-0} seconds=$secs $(origin_tcp_delta "$tcp0" "$tcp1")" \
    >>"$tmp/points.kv"
  awk -v s="$status" -v b="${size:-0}" -v t="$secs" 'BEGIN { printf "%s %.2f\n", s, (t > 0 ? b / t / 1e6 : 0) }'
}

# --- the grid ---------------------------------------------------------------------------
: >"$tmp/points.kv"
for loss in $losses; do
  for rtt in $rtts; do
    spec="$(impair_spec "$rtt" "$loss")"
    log "RTT $rtt ms, loss $loss % each way: element on the server link [${spec}]"
    lab_with_element "$spec"
    for run in $(seq "$runs"); do
      for path in $paths; do
        case "$path" in
          direct)
            bridge_up 0
            trust="$origin/origin.crt" ;;
          sslsplit)
            redirect_up
            start_sslsplit "$tmp/sslsplit-$rtt-$loss-$run.err" "$tmp/sslsplit-connect-$rtt-$loss-$run.log" "$origin/origin.crt"
            trust="$tmp/ca/ca.pem" ;;
          tlsgate)
            tls_config "$root/configs/lab.toml" "$tmp/connections-$rtt-$loss-$run.jsonl" >"$tmp/tls.toml"
            start_tlsgate "$tmp/tls.toml" "$tmp/tlsgate-$rtt-$loss-$run.log" \
              --report-json "$tmp/report-$rtt-$loss-$run.json"
            trust="$tmp/ca/ca.pem" ;;
        esac
        reachable || log "  $path: $TG_SRV_V4 does not answer ping (measuring anyway)"
        read -r status rate <<<"$(download "$rtt" "$loss" "$path" "$run" "$trust")"
        log "  $path, run $run: $rate MB/s ($status); origin: $(tail -1 "$tmp/points.kv" | grep -o 'retrans=.*')"
        case "$path" in
          direct) ip -n "$TG_NS_GW" link del br0 ;;
          sslsplit) stop_sslsplit; redirect_down ;;
          tlsgate) stop_tlsgate ;;
        esac
      done
    done
  done
done
: >"$tmp/extra.kv"

# --- the element's own throughput ----------------------------------------------------
# Prints "MB/s cores" of an 8 s iperf3 download through the bridge path (0 if
# it failed) and the CPU the element used meanwhile (cores; 0 without one).
iperf_download() {
  local element_pid cpu0 cpu1
  element_pid="$(ns_pids_named "$TG_NS_IMP-server" tlsgate-impair | head -1)"
  bridge_up 0
  ip netns exec "$TG_NS_SRV" iperf3 -s -1 -B "$TG_SRV_V4" >/dev/null 2>&1 &
  local server=$! rate
  for _ in $(seq 50); do ip netns exec "$TG_NS_SRV" ss -Hltn "sport = :5201" | grep -q . && break; sleep 0.1; done
  cpu0="$(proc_cpu_seconds $element_pid)"
  rate="$(timeout 60 ip netns exec "$TG_NS_CLI" iperf3 -c "$TG_SRV_V4" -R -t 8 -J 2>/dev/null |
    python3 -c 'import json, sys; print("%.0f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"] / 8e6))' 2>/dev/null)" || rate=0
  cpu1="$(proc_cpu_seconds $element_pid)"
  kill "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  ip -n "$TG_NS_GW" link del br0
  echo "${rate:-0} $(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN { printf "%.2f", (b - a) / 8 }')"
}
if ((element)); then
  log "element throughput: iperf3 download over the plain veths"
  lab_with_element none
  read -r plain _ <<<"$(iperf_download)"
  log "element throughput: the same through tlsgate-impair (no impairment) on the server link"
  lab_with_element ""
  read -r through element_cores <<<"$(iperf_download)"
  log "  plain $plain MB/s, through the element $through MB/s (element CPU $element_cores cores)"
  echo "element_plain=$plain element_through=$through element_cores=$element_cores" >>"$tmp/extra.kv"
fi
timeout 60 "$here/lab-down.sh" >/dev/null 2>&1

# --- memory per idle intercepted connection at the defaults ------------------------
if ((memory)); then
  default_buffer="$(sed -n 's/^| `tcp.rx_buffer`, `tcp.tx_buffer` | \([0-9]*\) |.*/\1/p' "$root/README.md")"
  [[ "$default_buffer" =~ ^[0-9]+$ ]] || { log "README.md names no default tcp.rx_buffer"; exit 1; }
  log "memory: $hold_count idle intercepted connections at the default $default_buffer B buffers (bench-concurrency.sh)"
  timeout 1800 "$here/bench-concurrency.sh" --counts "$hold_count" --buffers "$default_buffer" \
    --gen-buffer 256 --sweep "" --quiet-wait 30 --retries 1 --keep >"$tmp/concurrency.out" 2>"$tmp/concurrency.log" ||
    log "bench-concurrency.sh failed: $(tail -3 "$tmp/concurrency.log" | tr '\n' ' ')"
  cdir="$(sed -n 's/.*logs kept in \([^ ]*\) (rc.*/\1/p' "$tmp/concurrency.log" | tail -1)"
  if [[ -s "$cdir/rows.jsonl" ]]; then
    python3 - "$cdir/rows.jsonl" >>"$tmp/extra.kv" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
rows = [r for r in rows if r.get("kind") == "curve" and r.get("n") and r.get("tg_rss")]
best = ([r for r in rows if r.get("valid")] or rows)[-1]
tg = best.get("tg") or {}
print(f"idle_kib={(best['tg_rss'] - best['tg_base']) / best['n'] / 1024:.1f} idle_n={best['n']}"
      f" idle_valid={'yes' if best.get('valid') else 'no'}"
      f" idle_sockbuf={tg.get('socket_buffer_bytes', 0)} idle_base_mib={best['tg_base'] / 2**20:.0f}"
      f" idle_held_mib={best['tg_rss'] / 2**20:.0f}")
PY
    log "  $(tail -1 "$tmp/extra.kv")"
    rm -rf "$cdir"
  else
    log "bench-concurrency.sh left no rows (log: $tmp/concurrency.log)"
  fi
fi

# --- tables, chart, doc ------------------------------------------------------------------
table="$tmp/table.md"
timeout 60 python3 "$here/bench-wan/report.py" "$tmp" "$mb" "$tmp/bench-wan.svg" >"$table"
cat "$table"
((write_doc)) || exit 0

sysctl_in() { ip netns exec "$1" sysctl -n "$2" 2>/dev/null | tr '\t' ' '; }
timeout 60 "$here/lab-up.sh" >/dev/null
rmem="$(sysctl_in "$TG_NS_CLI" net.ipv4.tcp_rmem)" wmem="$(sysctl_in "$TG_NS_SRV" net.ipv4.tcp_wmem)"
cc="$(sysctl_in "$TG_NS_SRV" net.ipv4.tcp_congestion_control)" sack="$(sysctl_in "$TG_NS_SRV" net.ipv4.tcp_sack)"
timeout 60 "$here/lab-down.sh" >/dev/null 2>&1
extra() { sed -n "s/.*\b$1=\([^ ]*\).*/\1/p" "$tmp/extra.kv" | tail -1; }
cpu="$(lscpu | sed -n 's/^Model name: *//p' | head -1)" || true
sslsplit_version="$(sslsplit -V 2>&1 | awk 'NR == 1 {print $2}')" || true
minutes=$(((SECONDS + 59) / 60))
section="$tmp/section.md"
{
  cat <<EOF
<!-- Generated by scripts/bench-wan.sh --write-doc: edits between these markers are overwritten. -->
## Long and lossy paths: direct, SSLsplit, tlsgate (issue 13)

Reproduce (root): \`$cmdline\` (about $minutes min here, the memory and element
measurements included; release builds; own namespaces tgw-*, so it runs beside the lab tests).
Machine: $(nproc) vCPU ${cpu:-unknown CPU}, $(awk '/^MemTotal:/ {printf "%.0f GiB", $2 / 2^20}' /proc/meminfo),
Linux $(uname -r), run on $(date -u +%Y-%m-%d) at commit $commit, SSLsplit ${sslsplit_version:-?}.
The machine was shared with other engineers' builds and tests during the run: single
figures move with them, compare the paths of one row (measured within a minute of each other).

![MB/s of one download by round trip and loss, per path](bench-wan.svg)

**Setup.** The lab of \`scripts/lab-up.sh\` (client 198.18.0.1 in tgw-cli, nginx origin
198.18.0.2 in tgw-srv, \`tests/lab/origin.sh\`). The round trip and the loss are added by the
impairment element \`tlsgate-impair\` on the **server link** (tgw-gw/gws0 ⇄ tgw-srv/srv0, between
the interceptor and the origin; \`scripts/lab-impair.sh server SPEC SPEC\`): half the RTT as
delay and the loss rate **each way** (data and ACKs). So the origin's kernel sends the data
into the long, lossy path and the interceptor's receiving leg must open its window to the
bandwidth-delay product; the client link is a plain veth. The element stays in the path at
0 ms / 0 %. Per point a fresh lab and origin, then the paths one after the other:

- **direct**: a Linux bridge br0 in tgw-gw joining gwc0 and gws0 (kernel forwarding; TCP is the
  end hosts' kernels: $cc, SACK ${sack:-?}, tcp_rmem $rmem, tcp_wmem $wmem);
- **SSLsplit**: bench-compare's path (b): the bridge with netfilter and an nftables redirect
  of 198.18.0.2:443 to \`sslsplit ... ssl 0.0.0.0 8443\` (kernel sockets on both legs, same
  kernel settings), forging with the same CA as tlsgate, verifying the origin;
- **tlsgate**: \`tlsgate run\` on configs/lab.toml plus \`[intercept] tcp_ports = [443]\`,
  \`mode = "tls"\`; **every \`[tcp]\` setting at its default** (4 MiB rx/tx buffers committed
  lazily, Cubic, \`max_retransmissions\` 6).

Each download: \`curl --http1.1 https://origin.test/bulk.bin\` of $mb MB of random bytes, piped
through SHA-256 (every completed download was checked byte for byte), at most ${dl_timeout} s.

### Results

EOF
  cat "$table"
  plain="$(extra element_plain)" through="$(extra element_through)"
  if [[ -n "$through" ]]; then
    cat <<EOF
**The impairment element's own throughput** (no delay, no loss): \`iperf3 -R -t 8\` (kernel TCP,
one stream, download) from tgw-cli to tgw-srv across the bridge in tgw-gw: over the plain veths
**$plain MB/s**, with \`tlsgate-impair\` (release build, DPDK af_packet, one lcore) inserted on the
server link **$through MB/s**, the element's thread using $(extra element_cores) cores meanwhile (its
CPU time over the 8 s). Both runs share the 2 vCPUs with iperf3's two ends, the kernel's veth and
bridge work and whatever else ran on the machine.

EOF
  fi
  kib="$(extra idle_kib)"
  if [[ -n "$kib" ]]; then
    cat <<EOF
**Memory per idle intercepted connection at the defaults**: \`scripts/bench-concurrency.sh
--counts $(extra idle_n) --buffers $default_buffer --gen-buffer 256 --sweep ""\` (the concurrency
section's method: \`tlsgate-loadgen\` opens $(extra idle_n) TLS 1.3 connections through tlsgate, one
100/1000 B exchange each, then holds them idle; tlsgate's \`[tcp]\` buffers set to the default
$default_buffer B): tlsgate's VmRSS $(extra idle_base_mib) → $(extra idle_held_mib) MiB, **$kib KiB per connection**;
committed socket buffers while held: $(extra idle_sockbuf) B (valid row: $(extra idle_valid)).

EOF
  fi
} >"$section"
cp "$tmp/bench-wan.svg" "$chart"
chmod 644 "$chart"
python3 "$here/write-doc-section.py" "$doc" "$section" bench-wan
log "wrote the bench-wan section of $doc and $chart"
