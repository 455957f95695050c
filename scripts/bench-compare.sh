#!/usr/bin/env bash
# scripts/bench-compare.sh — side-by-side benchmark in the namespace lab: the
# same HTTPS workloads with no appliance, through SSLsplit (Debian's package)
# and through tlsgate intercepting TLS, in one run.
#
# Usage: scripts/bench-compare.sh [--write-doc] [--runs N] [--requests N]
#          [--concurrency N] [--ka-requests N] [--bulk-mb N] [--latency-requests N]
#          [--hold K] [--no-profile] [--keep]   (root)
#   --runs: alternating runs per path, the tables show medians (default 3).
#   --requests/--concurrency: ab -n/-c of the connection-rate workload (2000/20).
#   --ka-requests: ab -k -n of the kept-alive workload (default 50000).
#   --bulk-mb: size of the bulk file in MB (10^6 bytes, default 200).
#   --latency-requests: sequential curl requests per latency sample (default 500).
#   --hold: idle connections held for the memory workload (default 3000).
#   --no-profile: no perf profile of path (c) after the runs.
#   --keep: keep the temp dir (logs, reports, ab/curl output, per-run records).
#   --write-doc: (re)write the section between <!-- bench-compare:begin --> and
#   <!-- bench-compare:end --> of docs/BENCHMARKS.md (scripts/write-doc-section.py)
#   and the chart docs/bench-compare.svg.
#
# Paths (own namespaces tgc-cli/tgc-gw/tgc-srv, client 198.18.0.1, nginx origin
# 198.18.0.2 serving origin.test; alternating a b c a b c ..., median of --runs):
#   (a) no appliance: a Linux bridge br0 in the gw namespace joining gwc0 and gws0
#       (bridge netfilter off), as bench-tls.sh's (a).
#   (b) SSLsplit, transparent and inline: the same bridge with br_netfilter on
#       (nf_call_iptables) and 198.18.0.3/24 on br0, connection tracking flushed
#       (conntrack -F); an nftables rule in the gw namespace,
#       ip daddr 198.18.0.2 tcp dport 443 redirect to :8443, hands the
#       client's connections to `sslsplit ... ssl 0.0.0.0 8443` (NAT engine
#       netfilter: the original destination from SO_ORIGINAL_DST), which forges
#       with the same CA as tlsgate (`tlsgate ca init`, ECDSA P-256) and an ECDSA
#       P-256 leaf key (-K), logs one line per connection (-l) and verifies the
#       origin's chain (-o VerifyPeer=yes, SSL_CERT_FILE = the origin's
#       certificate; checked at start: with another trust file it must refuse).
#   (c) tlsgate intercepting TLS on 443, as bench-tls.sh's (c): configs/lab.toml +
#       [intercept] tcp_ports = [443], mode = "tls", the CA, upstream_trust = the
#       origin's certificate, a connection log.
# Workloads, per run and path, in this order (one start of the path):
#   check: curl trusting only the forging CA (b, c) or only the origin (a) must
#     get the page: the connection really is intercepted (or not).
#   rate: ab -r -s 10 -n 2000 -c 20 https://origin.test/index.html (a new TCP
#     connection and a full TLS handshake per request).
#   kept-alive: ab -k -n 50000 -c 20 on the same URL.
#   latency: curl, one process, 500 sequential requests on new connections
#     (Connection: close, --no-sessionid), then 500 on one kept-alive connection;
#     -w time_total per request; p50/p99.
#   bulk: curl --http1.1 -o /dev/null of a 200 MB random file; MB/s = size /
#     time_total; in run 1 a second download checks the SHA-256.
#   CPU around rate, kept-alive and bulk: the interceptor's utime + stime (all its
#     processes and threads, /proc/PID/stat), tlsgate's worker busy time
#     (--stats-interval 0.2), and the CPU other processes of the machine used
#     meanwhile (scripts/bench-compare/othercpu.py: the machine is shared);
#     for every path, (a) included, the whole machine's busy CPU from /proc/stat
#     (all CPUs: user, nice, system, irq, softirq, steal), whoever it is charged to.
# rustls floor, per run, right before path (c) on a quiet machine: the
#   crates/mitm/examples/tls_floor.rs example (in memory, one thread, ~10 s):
#   the CPU of the two rustls handshakes tlsgate does per connection and of bare
#   AEAD decrypt + encrypt per GB; report.py judges tlsgate's CPU against it.
# Profile, after the runs (unless --no-profile, and when perf can record here): one
#   more start of path (c), `perf record -a -e cpu-clock` over the whole machine during
#   the rate workload and during one download: where the machine's busy time went
#   (perf report --sort comm,dso, idle left out) and tlsgate's own symbols (--pid).
# Memory, per run, for (b) and (c) on a freshly started interceptor:
#   scripts/bench-compare/hold.py in the client namespace opens --hold connections
#   (handshake, one keep-alive request and its response, then idle); the
#   interceptor's VmRSS (all processes) before and with all of them open, kernel
#   TCP sockets in use in the gw namespace, and for tlsgate its final report
#   (--report-json, written by stopping it while the connections are still open:
#   rss_bytes, tcp.socket_buffer_bytes, tcp.tls_sessions_live).
# The origin is tests/lab/origin.sh's nginx restarted on a copy of its config with
# more connections (worker_connections 16384, worker_rlimit_nofile 20000),
# keepalive_timeout 600s, keepalive_requests 1000000 and no access log.
# Validity (else the run is INVALID, the script exits 1 without writing the doc):
# ab without failures or non-2xx (and -k all kept alive), every download complete
# and the checked one byte-exact, the CA check as expected, in (b) and (c) the
# connections intercepted (SSLsplit's connect-log lines, tlsgate's
# tcp.tls_intercepted; for SSLsplit also the redirect rule's counter) within
# 2 x concurrency + 5 below the client's new TCP connections (ab opens and
# resets a few surplus ones) and not above, no SYN to the origin bridged past
# SSLsplit (an nftables counter in the bridge's forward hook), tlsgate's
# tcp.tls_failed 0; in the memory workload every connection opened (trusting
# only the forging CA) and still open when measured.
#
# Installs apache2-utils, nginx-light, curl, sslsplit, nftables, conntrack,
# python3 and openssl with apt-get if missing. Builds tlsgate once and runs a
# private copy. Always cleans up (trap: processes, nftables tables, bridge,
# namespaces, /etc/netns/tgc-cli). Bounded: every command has a timeout, a watchdog ends the
# run after 25 min.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
doc="$root/docs/BENCHMARKS.md"
chart="$root/docs/bench-compare.svg"
helpers="$here/bench-compare"

export TG_NS_CLI=tgc-cli TG_NS_GW=tgc-gw TG_NS_SRV=tgc-srv TG_NS_BOX=tgc-box TG_NS_LG=tgc-lg TG_NS_IMP=tgc-imp
# shellcheck source=scripts/lab-env.sh
. "$here/lab-env.sh"
# shellcheck source=scripts/bench-lab.sh
. "$here/bench-lab.sh"

write_doc=0 keep=0 runs=3 requests=2000 concurrency=20 ka_requests=50000 bulk_mb=200
lat_requests=500 hold=3000 profile=1
cmdline="scripts/bench-compare.sh${*:+ $*}"
while (($#)); do
  case "$1" in
    --write-doc) write_doc=1 ;;
    --keep) keep=1 ;;
    --runs) runs="$2"; shift ;;
    --requests) requests="$2"; shift ;;
    --concurrency) concurrency="$2"; shift ;;
    --ka-requests) ka_requests="$2"; shift ;;
    --bulk-mb) bulk_mb="$2"; shift ;;
    --latency-requests) lat_requests="$2"; shift ;;
    --hold) hold="$2"; shift ;;
    --no-profile) profile=0 ;;
    -h|--help) sed -n '2,88p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "bench-compare: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
[[ $(id -u) -eq 0 ]] || { echo "bench-compare: must run as root" >&2; exit 1; }
for n in "$runs" "$requests" "$concurrency" "$ka_requests" "$bulk_mb" "$lat_requests" "$hold"; do
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "bench-compare: $n is not a positive number" >&2; exit 2; }
done
((hold <= 8000)) || { echo "bench-compare: --hold is at most 8000 (tlsgate's max_connections, open files)" >&2; exit 2; }
# Open files: SSLsplit takes two per held connection, the holder and nginx one each.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
(($(ulimit -n) >= 2 * hold + 512)) ||
  { echo "bench-compare: --hold $hold needs $((2 * hold + 512)) open files, the limit is $(ulimit -n)" >&2; exit 2; }

log() { echo "bench-compare: $*" >&2; }

# --- packages -------------------------------------------------------------------
bench_install_missing ab:apache2-utils nginx:nginx-light curl:curl sslsplit:sslsplit \
  nft:nftables conntrack:conntrack python3:python3 openssl:openssl
# The holder gets signals, so it runs as itself (Debian's python3 when present).
py="$(command -v /usr/bin/python3 || command -v python3 || true)"

# --- state and cleanup ------------------------------------------------------------
bench_begin bench-compare
origin="$tmp/origin"
hold_pid="" perf_pid=""
nft_table=bench_compare   # the redirect rule's table, in the gw namespace
bulk_bytes=$((bulk_mb * 1000000))

stop_holder() {
  [[ -n "$hold_pid" ]] || return 0
  kill -TERM "$hold_pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$hold_pid" 2>/dev/null || break; sleep 0.2; done
  kill -KILL "$hold_pid" 2>/dev/null || true
  wait "$hold_pid" 2>/dev/null || true
  hold_pid=""
}

bench_stop() { stop_holder; stop_interrupted "$perf_pid"; }
bench_drop_large() { rm -f "$origin/www/bulk.bin" "$tmp"/perf-*.data; }

# Watchdog: the whole benchmark is bounded.
bench_watchdog 1500

# --- build, CA, keys --------------------------------------------------------------
bench_build_tlsgate
log "building the tls_floor example (release)"
(cd "$root" && timeout 1200 cargo build --release --quiet -p mitm --example tls_floor)
cp "$root/target/release/examples/tls_floor" "$tmp/tls_floor"
timeout 60 "$tmp/tlsgate" ca init --dir "$tmp/ca" >/dev/null
# SSLsplit's forged leaves get an ECDSA P-256 key as tlsgate's do (its default
# would be a fresh 2048-bit RSA key).
timeout 30 openssl ecparam -name prime256v1 -genkey -noout -out "$tmp/leaf.key" 2>/dev/null

# --- lab and origin ---------------------------------------------------------------
timeout 120 "$here/lab-up.sh" >/dev/null
# Bridged frames skip netfilter unless a bridge asks for it ((b) does).
for f in iptables ip6tables arptables; do
  ip netns exec "$TG_NS_GW" sysctl -qw "net.bridge.bridge-nf-call-$f=0" 2>/dev/null || true
done
timeout 60 "$root/tests/lab/origin.sh" start "$origin" origin.test
# The same nginx on a copy of its config, with room for the held connections.
timeout 30 "$root/tests/lab/origin.sh" stop "$origin"
for _ in $(seq 100); do
  ip netns exec "$TG_NS_SRV" ss -Hltn "sport = :443" | grep -q . || break
  sleep 0.05
done
sed -e 's/^worker_processes 1;$/worker_processes 1;\nworker_rlimit_nofile 20000;/' \
    -e 's/worker_connections 1024;/worker_connections 16384;/' \
    -e 's|^\(    access_log\) .*;$|\1 off;\n    keepalive_timeout 600s;\n    keepalive_requests 1000000;|' \
    "$origin/nginx.conf" >"$origin/nginx-bench.conf"
for want in 'worker_connections 16384' 'keepalive_timeout 600s' 'worker_rlimit_nofile 20000'; do
  grep -q "$want" "$origin/nginx-bench.conf" ||
    { log "tests/lab/origin.sh's nginx.conf changed: could not set $want"; exit 1; }
done
timeout 30 ip netns exec "$TG_NS_SRV" nginx -p "$origin" -e "$origin/error.log" -c "$origin/nginx-bench.conf"
for _ in $(seq 100); do
  ip netns exec "$TG_NS_SRV" ss -Hltn "sport = :443" | grep -q . && break
  sleep 0.05
done
ip netns exec "$TG_NS_SRV" ss -Hltn "sport = :443" | grep -q . ||
  { log "nginx did not listen on 443: $(cat "$origin/error.log")"; exit 1; }
log "writing a ${bulk_mb} MB random file to the origin"
timeout 300 head -c "$bulk_bytes" /dev/urandom >"$origin/www/bulk.bin"
bulk_sha="$(timeout 120 sha256sum "$origin/www/bulk.bin" | cut -d' ' -f1)"
bench_client_hosts
url="https://origin.test/index.html"
bulk_url="https://origin.test/bulk.bin"
# curl and the holder trust both the forging CA and the origin.
cat "$tmp/ca/ca.pem" "$origin/origin.crt" >"$tmp/trust.pem"

tls_config "$root/configs/lab.toml" "$tmp/check.jsonl" >"$tmp/check.toml"
timeout 60 "$tmp/tlsgate" check --config "$tmp/check.toml" >/dev/null

# --- paths ------------------------------------------------------------------------
start_path() {  # a|b|c tag (tag names the logs: run number, m1.. for memory runs)
  local path="$1" tag="$2"
  case "$path" in
    a) kernel_path_up; return ;;
    b)
      redirect_up
      start_sslsplit "$tmp/sslsplit-$tag.err" "$tmp/sslsplit-connect-$tag.log" "$origin/origin.crt"
      ;;
    c)
      tls_config "$root/configs/lab.toml" "$tmp/connections-$tag.jsonl" >"$tmp/tls-$tag.toml"
      start_tlsgate "$tmp/tls-$tag.toml" "$tmp/tlsgate-$tag.log" --stats-interval 0.2 \
        --report-json "$tmp/report-$tag.json"
      ;;
  esac
  path_reachable "$path"
}

stop_path() {  # a|b|c tag [nowait]
  local path="$1" tag="$2" nowait="${3:-}"
  case "$path" in
    a) ip -n "$TG_NS_GW" link del br0 ;;
    b)
      # SSLsplit writes its connect log from a thread: let it catch up.
      local n=-1 m
      for _ in $(seq 40); do
        m="$(wc -l <"$tmp/sslsplit-connect-$tag.log" 2>/dev/null || echo 0)"
        [[ "$m" == "$n" ]] && break
        n="$m"
        sleep 0.5
      done
      echo "$(nft_counters ip to_sslsplit)$(nft_counters ip syn_state)$(nft_counters bridge forward)" \
        >"$tmp/nft-$tag"
      stop_sslsplit
      redirect_down
      ;;
    c)
      # Let intercepted sessions finish (closes, smoltcp's 10 s TIME-WAIT) so
      # the report and connection log are complete: up to 25 s.
      [[ -n "$nowait" ]] || wait_sessions_closed "$tmp/tlsgate-$tag.log" 125
      stop_tlsgate_reported "$tmp/report-$tag.json" "$tag"
      ;;
  esac
}

interceptor_pids() {  # a|b|c
  case "$1" in
    b) sslsplit_pids ;;
    c) echo "$tg_pid" ;;
  esac
  return 0
}

# --- measurements -----------------------------------------------------------------
# TCP sockets in use in a namespace (/proc/net/sockstat, per namespace).
# shellcheck disable=SC2016  # awk program
tcp_inuse() { ip netns exec "$1" awk '/^TCP:/ {print $3}' /proc/net/sockstat; }

# Snapshot NAME of the CPU counters: interceptor CPU, worker busy, time, the
# whole machine's busy CPU (/proc/stat) and the other processes' CPU (othercpu.py).
snap() {  # path name
  local path="$1" name="$2" cpu=0 busy=0 pids
  if [[ "$path" != a ]]; then
    sleep 0.3
    pids="$(interceptor_pids "$path")"
    # shellcheck disable=SC2086  # word splitting of the pid list on purpose
    cpu="$(proc_cpu_seconds $pids)"
  fi
  if [[ "$path" == c ]]; then
    read -r busy _ <<<"$(busy_snapshot "$tmp/tlsgate-$cur_tag.log")"
  fi
  echo "$cpu ${busy:-0} $(date +%s.%N) $(machine_cpu_seconds)" >"$tmp/snap-$name"
  timeout 30 python3 "$helpers/othercpu.py" snapshot $$ "$TG_NS_CLI" "$TG_NS_GW" "$TG_NS_SRV" \
    >"$tmp/snap-$name.other" 2>/dev/null || echo '{}' >"$tmp/snap-$name.other"
}
# prints "cpu busy wall other machine" seconds between two snapshots
snap_delta() {  # name1 name2
  local other
  other="$(timeout 30 python3 "$helpers/othercpu.py" diff "$tmp/snap-$1.other" "$tmp/snap-$2.other" 2>/dev/null)" || other=nan
  awk -v o="$other" '{ c[NR] = $1; b[NR] = $2; t[NR] = $3; m[NR] = $4 }
    END { printf "%.2f %.3f %.2f %s %.2f\n", c[2] - c[1], b[2] - b[1], t[2] - t[1], o, m[2] - m[1] }' \
    "$tmp/snap-$1" "$tmp/snap-$2"
}

# Waits (up to 20 s) until the other processes of the machine use less than a
# quarter of a vCPU over 2 s, so that the measurement gets the machine; logs when not.
wait_quiet() {
  local used
  for _ in $(seq 10); do
    timeout 30 python3 "$helpers/othercpu.py" snapshot $$ "$TG_NS_CLI" "$TG_NS_GW" "$TG_NS_SRV" >"$tmp/quiet-1"
    sleep 2
    timeout 30 python3 "$helpers/othercpu.py" snapshot $$ "$TG_NS_CLI" "$TG_NS_GW" "$TG_NS_SRV" >"$tmp/quiet-2"
    used="$(timeout 30 python3 "$helpers/othercpu.py" diff "$tmp/quiet-1" "$tmp/quiet-2")"
    awk -v u="$used" 'BEGIN { exit !(u < 0.5) }' && return 0
  done
  log "other processes still busy ($used CPU s in 2 s): measuring anyway (see 'other processes' CPU')"
}

# The in-memory rustls floor of issue 6's CPU targets (crates/mitm/examples/tls_floor.rs):
# its JSON in floor-RUN.json, the other processes' CPU while it ran in floor.kv.
# A failure leaves the floor unmeasured (report.py says so), not the run void.
tls_floor() {  # run
  local run="$1" t0 t1 other wall
  timeout 30 python3 "$helpers/othercpu.py" snapshot $$ "$TG_NS_CLI" "$TG_NS_GW" "$TG_NS_SRV" >"$tmp/floor-other-0"
  t0="$(date +%s.%N)"
  if ! timeout 180 "$tmp/tls_floor" --json >"$tmp/floor-$run.json" 2>"$tmp/floor-$run.txt"; then
    log "tls_floor failed (run $run): $(tail -3 "$tmp/floor-$run.txt" | tr '\n' ' ')"
    rm -f "$tmp/floor-$run.json"
    return 0
  fi
  t1="$(date +%s.%N)"
  timeout 30 python3 "$helpers/othercpu.py" snapshot $$ "$TG_NS_CLI" "$TG_NS_GW" "$TG_NS_SRV" >"$tmp/floor-other-1"
  other="$(timeout 30 python3 "$helpers/othercpu.py" diff "$tmp/floor-other-0" "$tmp/floor-other-1")" || other=nan
  wall="$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')"
  echo "run=$run other=$other wall=$wall" >>"$tmp/floor.kv"
  log "  rustls floor: $(python3 -c 'import json, sys
j = json.load(open(sys.argv[1]))
print("handshakes %.0f us per connection (server role %.0f, client role full %.0f, resumed %.0f),"
      " AES-256-GCM %.3f CPU s per GB relayed" % (j["handshakes_cpu_s_per_connection"] * 1e6,
      j["server_role_cpu_s"] * 1e6, j["client_role_full_cpu_s"] * 1e6, j["client_role_resumed_cpu_s"] * 1e6,
      j["aead_cpu_s_per_gb"]))' "$tmp/floor-$run.json" 2>/dev/null || echo "unreadable JSON");" \
    "other processes' CPU ${other} s in ${wall} s"
}

# Kept-alive requests per second: ab -k; prints req/s or "failed".
ka_rate() {  # output-file
  local out="$1"
  timeout 300 ip netns exec "$TG_NS_CLI" \
    ab -k -r -s 10 -n "$ka_requests" -c "$concurrency" "$url" >"$out" 2>&1 || true
  local rate failed non2xx kept
  rate="$(awk '/^Requests per second:/ {print $4}' "$out")"
  failed="$(awk '/^Failed requests:/ {print $3}' "$out")"
  non2xx="$(awk '/^Non-2xx responses:/ {print $3}' "$out")"
  kept="$(awk '/^Keep-Alive requests:/ {print $3}' "$out")"
  if [[ -n "$rate" && "${failed:-1}" == 0 && -z "$non2xx" && "${kept:-0}" -ge $((ka_requests - concurrency)) ]]; then
    printf '%.0f\n' "$rate"
  else
    log "ab -k failed (failed ${failed:-?}, non-2xx ${non2xx:-0}, kept alive ${kept:-?}): $(grep -m1 -E 'SSL|apr_|timeout|error' "$out" || true)"
    echo failed
  fi
}

# Sequential requests with one curl: new connections or one kept-alive connection.
latency_run() {  # new|ka output-file
  local kind="$1" out="$2" cfg="$tmp/curl-lat.cfg" extra=()
  : >"$cfg"
  for _ in $(seq "$lat_requests"); do
    printf 'url = "%s"\noutput = "/dev/null"\n' "$url" >>"$cfg"
  done
  [[ "$kind" == new ]] && extra=(-H 'Connection: close' --no-sessionid)
  timeout 300 ip netns exec "$TG_NS_CLI" curl --http1.1 -sS --cacert "$tmp/trust.pem" --max-time 20 \
    "${extra[@]}" -w '%{time_connect} %{time_appconnect} %{time_total} %{num_connects} %{http_code}\n' \
    -K "$cfg" >"$out" 2>"$out.err" || log "latency ($kind): curl: $(head -c 300 "$out.err")"
}

# Whether the client gets the page trusting only the forging CA (b, c) or only
# the origin's certificate (a): prints "forged" / "origin" or "FAILED".
ca_check() {  # path
  local trust="$tmp/ca/ca.pem" want=forged code
  [[ "$1" == a ]] && { trust="$origin/origin.crt"; want=origin; }
  code="$(timeout 30 ip netns exec "$TG_NS_CLI" curl --http1.1 -sS --cacert "$trust" --max-time 10 \
    -o /dev/null -w '%{http_code}' "$url" 2>"$tmp/ca-check.err")" || true
  if [[ "$code" == 200 ]]; then echo "$want"; else
    log "path ($1): curl trusting only the $want certificate's issuer failed: $(head -c 300 "$tmp/ca-check.err")"
    echo FAILED
  fi
}

# --- SSLsplit's upstream verification is on ---------------------------------------
# Started once with the forging CA as its only trust (not the origin's issuer),
# SSLsplit must refuse the origin ("certificate verify failed"); started with
# the origin's certificate, it must pass the page.
log "checking that SSLsplit verifies the origin (it must refuse with the wrong trust)"
redirect_up
start_sslsplit "$tmp/sslsplit-verify-wrong.err" "$tmp/sslsplit-connect-verify-wrong.log" "$tmp/ca/ca.pem"
path_reachable b
code="$(timeout 30 ip netns exec "$TG_NS_CLI" curl --http1.1 -s -k --max-time 10 -o /dev/null -w '%{http_code}' "$url")" || true
stop_sslsplit
[[ "$code" != 200 ]] ||
  { log "SSLsplit passed a page from an origin it should not have verified (VerifyPeer not effective)"; exit 1; }
grep -q 'certificate verify failed' "$tmp/sslsplit-verify-wrong.err" ||
  { log "SSLsplit refused, but not for a failed verification:"; cat "$tmp/sslsplit-verify-wrong.err" >&2; exit 1; }
start_sslsplit "$tmp/sslsplit-verify-right.err" "$tmp/sslsplit-connect-verify-right.log" "$origin/origin.crt"
code="$(timeout 30 ip netns exec "$TG_NS_CLI" curl --http1.1 -sS --cacert "$tmp/ca/ca.pem" --max-time 10 -o /dev/null -w '%{http_code}' "$url")" || true
stop_sslsplit
redirect_down
[[ "$code" == 200 ]] || { log "SSLsplit with the origin's certificate as trust: HTTP ${code:-none}"; cat "$tmp/sslsplit-verify-right.err" >&2; exit 1; }
log "  SSLsplit refuses an unverifiable origin (certificate verify failed) and passes the verified one"

# --- runs -------------------------------------------------------------------------
perf="$tmp/perf.kv" mem="$tmp/mem.kv"
: >"$perf"
: >"$mem"
invalid=0
tolerance=$((2 * concurrency + 5))

log "warm-up on path (a)"
cur_tag=w
start_path a w
https_rate "$tmp/ab-warmup.txt" >/dev/null
bulk_rate "$tmp/curl-warmup.txt" >/dev/null
stop_path a w

for run in $(seq "$runs"); do
  for path in a b c; do
    if [[ "$path" == c ]]; then
      wait_quiet
      log "run $run/$runs, rustls floor (tls_floor example, in memory)"
      tls_floor "$run"
    fi
    wait_quiet
    log "run $run/$runs, path ($path)"
    cur_tag="$run"
    start_path "$path" "$run"
    [[ "$path" == c ]] && sleep 0.5
    issuer="$(ca_check "$path")"
    opens0="$(tcp_counter "$TG_NS_CLI" ActiveOpens)"
    snap "$path" r0
    rate="$(https_rate "$tmp/ab-$path-$run.txt")"
    snap "$path" r1
    ka="$(ka_rate "$tmp/abk-$path-$run.txt")"
    snap "$path" k1
    latency_run new "$tmp/lat-new-$path-$run.txt"
    latency_run ka "$tmp/lat-ka-$path-$run.txt"
    snap "$path" b0
    mbps="$(bulk_rate "$tmp/curl-$path-$run.txt")"
    snap "$path" b1
    sha="-"
    ((run == 1)) && sha="$(bulk_check)"
    opens1="$(tcp_counter "$TG_NS_CLI" ActiveOpens)"
    conns=$((opens1 - opens0 + 1))  # + the CA check's connection, opened before opens0
    read -r rate_cpu rate_busy rate_wall rate_other rate_machine <<<"$(snap_delta r0 r1)"
    read -r ka_cpu ka_busy ka_wall ka_other ka_machine <<<"$(snap_delta r1 k1)"
    read -r bulk_cpu bulk_busy bulk_wall bulk_other bulk_machine <<<"$(snap_delta b0 b1)"
    stop_path "$path" "$run"
    intercepted="-" why=() legs="-" redirected="-" bypassed="-" pickups="-"
    case "$path" in
      b)
        intercepted="$(grep -c ' ssl ' "$tmp/sslsplit-connect-$run.log" || true)"
        # TLS versions and suites of the client and origin legs (connect log).
        legs="$(grep -o 'sproto:[^ ]* dproto:[^ ]*' "$tmp/sslsplit-connect-$run.log" | sort | uniq -c |
          awk '{printf "%s%s %s x %s", (NR > 1 ? ", " : ""), $2, $3, $1}' | tr ' ' '_')"
        read -r redirected pickups syn_invalid syn_existing bypassed <"$tmp/nft-$run"
        ((pickups == 0)) ||
          log "  $pickups stray non-SYN segments to the origin started a conntrack entry (redirected to SSLsplit too)"
        [[ "$bypassed" == 0 ]] ||
          why+=("$bypassed SYNs to the origin bridged past SSLsplit (conntrack: $syn_invalid invalid, $syn_existing on an existing entry)")
        ((redirected >= conns - tolerance && redirected <= conns)) ||
          why+=("$redirected connections redirected for $conns client connections")
        errors="$(grep -c -i 'error' "$tmp/sslsplit-$run.err" || true)"
        ((errors == 0)) || log "  sslsplit logged $errors error lines (sslsplit-$run.err): $(grep -m1 -i error "$tmp/sslsplit-$run.err")"
        ;;
      c)
        read -r intercepted tls_failed <<<"$(python3 -c 'import json, sys
t = json.load(open(sys.argv[1]))["tcp"]
print(t.get("tls_intercepted", 0), t.get("tls_failed", 0))' "$tmp/report-$run.json")"
        [[ "$tls_failed" == 0 ]] || why+=("tls_failed $tls_failed")
        # TLS versions of both legs and upstream resumptions (connection log).
        legs="$(python3 -c 'import collections, json, sys
recs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
c = collections.Counter((r.get("client_tls_version"), r.get("client_cipher"), r.get("server_tls_version"),
                         r.get("server_cipher")) for r in recs)
parts = [f"client {a} {b} origin {x} {y} x {n}" for (a, b, x, y), n in c.most_common(3)]
resumed = sum(1 for r in recs if r.get("server_resumed"))
parts.append(f"upstream leg resumed {resumed} of {len(recs)}")
print(", ".join(parts).replace(" ", "_"))' "$tmp/connections-$run.jsonl")"
        ;;
    esac
    [[ "$rate" == failed ]] && why+=("ab failed")
    [[ "$ka" == failed ]] && why+=("ab -k failed")
    [[ "$mbps" == failed ]] && why+=("download failed")
    [[ "$sha" == MISMATCH ]] && why+=("SHA-256 mismatch")
    [[ "$issuer" == FAILED ]] && why+=("CA check failed")
    if [[ "$path" != a ]] && ((intercepted > conns || intercepted < conns - tolerance)); then
      why+=("$intercepted intercepted for $conns client connections")
    fi
    valid=ok
    if ((${#why[@]})); then
      valid="INVALID: $(IFS=';'; echo "${why[*]}")"
      invalid=1
      log "$valid"
    fi
    proto="$(awk -F': *' '/^SSL\/TLS Protocol:/ {print $2}' "$tmp/ab-$path-$run.txt" | tr ' ' '_')"
    tempkey="$(awk -F': *' '/^Server Temp Key:/ {print $2}' "$tmp/ab-$path-$run.txt" | tr ' ' '_')"
    log "  ${rate} conn/s, ${ka} kept-alive req/s, bulk ${mbps} MB/s (sha ${sha}); CA check ${issuer};" \
        "client connections ${conns}, intercepted ${intercepted} (redirected ${redirected}, bypassed ${bypassed});" \
        "interceptor CPU s ab ${rate_cpu}" \
        "(busy ${rate_busy}), ab -k ${ka_cpu} (busy ${ka_busy}), bulk ${bulk_cpu} (busy ${bulk_busy});" \
        "whole machine CPU s ${rate_machine}/${ka_machine}/${bulk_machine};" \
        "other processes' CPU s ${rate_other}/${ka_other}/${bulk_other}; ab TLS ${proto:-?} ${tempkey:-?}"
    echo "path=$path run=$run rate=$rate ka=$ka mbps=$mbps sha=$sha issuer=$issuer conns=$conns" \
      "intercepted=$intercepted redirected=$redirected pickups=${pickups:--} bypassed=$bypassed rate_cpu=$rate_cpu rate_busy=$rate_busy rate_wall=$rate_wall" \
      "rate_other=$rate_other rate_machine=$rate_machine ka_machine=$ka_machine bulk_machine=$bulk_machine ka_cpu=$ka_cpu ka_busy=$ka_busy ka_wall=$ka_wall ka_other=$ka_other" \
      "bulk_cpu=$bulk_cpu bulk_busy=$bulk_busy bulk_wall=$bulk_wall bulk_other=$bulk_other" \
      "proto=${proto:-?} tempkey=${tempkey:-?} legs=${legs:--} valid=${valid// /_}" >>"$perf"
    sleep 1
  done

  # Memory: a fresh interceptor holding --hold idle connections.
  for path in b c; do
    wait_quiet
    tag="m$run"
    cur_tag="$tag"
    log "run $run/$runs, memory, path ($path): holding $hold connections"
    start_path "$path" "$tag"
    sleep 1
    pids="$(interceptor_pids "$path")"
    # shellcheck disable=SC2086  # word splitting of the pid list on purpose
    rss0="$(proc_rss_bytes $pids)"
    inuse0="$(tcp_inuse "$TG_NS_GW")"
    status="$tmp/hold-$path-$run.status"
    timeout 30 python3 "$helpers/othercpu.py" snapshot $$ "$TG_NS_CLI" "$TG_NS_GW" "$TG_NS_SRV" >"$tmp/mem-other-0"
    t0="$(date +%s.%N)"
    # (no timeout wrapper: signals go to the holder itself; it ends after --hold s)
    ip netns exec "$TG_NS_CLI" "$py" "$helpers/hold.py" origin.test 443 "$hold" "$status" \
      --cafile "$tmp/ca/ca.pem" --hold 400 2>"$tmp/hold-$path-$run.err" &
    hold_pid=$!
    for _ in $(seq 1200); do
      grep -q '^ready' "$status" 2>/dev/null && break
      kill -0 "$hold_pid" 2>/dev/null || break
      sleep 0.25
    done
    sleep 1.5  # a --stats-interval print with everything open
    # shellcheck disable=SC2086
    rss1="$(proc_rss_bytes $pids)"
    inuse1="$(tcp_inuse "$TG_NS_GW")"
    timeout 30 python3 "$helpers/othercpu.py" snapshot $$ "$TG_NS_CLI" "$TG_NS_GW" "$TG_NS_SRV" >"$tmp/mem-other-1"
    t1="$(date +%s.%N)"
    other="$(timeout 30 python3 "$helpers/othercpu.py" diff "$tmp/mem-other-0" "$tmp/mem-other-1")" || other=nan
    wall="$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')"
    ready="$(sed -n 's/^ready \([0-9]*\)\/.*/\1/p' "$status" 2>/dev/null)"
    # How many are still open now (the holder answers SIGUSR1 in its status file).
    kill -USR1 "$hold_pid" 2>/dev/null || true
    for _ in $(seq 50); do grep -q '^alive' "$status" 2>/dev/null && break; sleep 0.1; done
    alive="$(sed -n 's/^alive \([0-9]*\)\/.*/\1/p' "$status" 2>/dev/null)"
    rep_sockbuf="-" rep_tls_live="-" live_rss="-"
    if [[ "$path" == c ]]; then
      # tlsgate's report as printed by --stats-interval 0.2 while the connections
      # are open: "memory: F flows holding X MiB of socket buffers, T TLS
      # sessions, ...; process resident R MiB" (rss_bytes,
      # tcp.socket_buffer_bytes, tcp.tls_sessions_live). Not the final
      # --report-json: stopping tlsgate with connections open leaves their
      # upstream legs open at the origin (tlsgate does not close them), and a
      # later connection from the same client port then waits 1 s for the
      # origin's stale socket to go.
      read -r rep_sockbuf rep_tls_live live_rss <<<"$(grep '^memory: ' "$tmp/tlsgate-$tag.log" | tail -1 |
        sed -nE 's/.* holding ([0-9.]+) MiB of socket buffers, ([0-9]+) TLS sessions.*process resident ([0-9.]+) MiB.*/\1 \2 \3/p' |
        awk '{ printf "%.0f %s %.0f", $1 * 1048576, $2, $3 * 1048576 }')"
    fi
    # The connections end normally (through the interceptor), then it stops.
    stop_holder
    stop_path "$path" "$tag"
    why=()
    [[ "${ready:-0}" == "$hold" ]] || why+=("${ready:-0} of $hold connections opened ($(head -c 300 "$tmp/hold-$path-$run.err"))")
    [[ "${alive:-0}" == "${ready:-0}" ]] || why+=("${alive:-0} of ${ready:-0} still open when measured")
    [[ "$path" != c || "$rep_tls_live" == "$hold" ]] || why+=("tls_sessions_live $rep_tls_live")
    if [[ "$path" == b ]]; then
      read -r _ _ syn_invalid syn_existing bypassed <"$tmp/nft-$tag"
      [[ "$bypassed" == 0 ]] ||
        why+=("$bypassed SYNs to the origin bridged past SSLsplit (conntrack: $syn_invalid invalid, $syn_existing on an existing entry)")
    fi
    valid=ok
    if ((${#why[@]})); then
      valid="INVALID: $(IFS=';'; echo "${why[*]}")"
      invalid=1
      log "$valid"
    fi
    log "  RSS $rss0 -> $rss1 B ($(((rss1 - rss0) / hold)) B per connection), kernel TCP sockets" \
        "$inuse0 -> $inuse1; tlsgate's counters while held: rss ${live_rss} B," \
        "socket buffers ${rep_sockbuf} B, TLS sessions" \
        "${rep_tls_live}; opened ${ready:-?}, alive ${alive:-?}; other processes' CPU ${other} s in ${wall} s"
    echo "path=$path run=$run k=$hold ready=${ready:-0} alive=${alive:-0} rss0=$rss0 rss1=$rss1" \
      "inuse0=$inuse0 inuse1=$inuse1 live_rss=$live_rss rep_sockbuf=$rep_sockbuf rep_tls_live=$rep_tls_live" \
      "other=$other wall=$wall valid=${valid// /_}" >>"$mem"
    sleep 1
  done
done

# --- tables and chart -------------------------------------------------------------
# --- profile of path (c) -------------------------------------------------------------
# One more start of tlsgate, the whole machine sampled during the rate workload and
# one download (nothing here is measured: the profile says where the time goes).
if ((profile)) && bench_perf_usable; then
  wait_quiet
  log "profile: perf record -a during path (c)'s rate workload and one download"
  cur_tag=p
  start_path c p
  sleep 0.5
  for what in rate bulk; do
    perf record -q -a -e cpu-clock -F 999 -o "$tmp/perf-$what.data" >"$tmp/perf-$what.log" 2>&1 &
    perf_pid=$!
    sleep 0.5
    case "$what" in
      rate) https_rate "$tmp/ab-profile.txt" >/dev/null ;;
      bulk) bulk_rate "$tmp/curl-profile.txt" >/dev/null ;;
    esac
    stop_interrupted "$perf_pid"
    perf_pid=""
    bench_perf_busy "$tmp/perf-$what.data" "$tmp/profile-$what-machine.txt"
    bench_perf_top "$tmp/perf-$what.data" "$tmp/profile-$what-tlsgate.txt" dso,sym --pid "$tg_pid" --percentage relative
  done
  stop_path c p
elif ((profile)); then
  log "perf cannot record here: no profile"
fi

table="$tmp/table.md"
timeout 60 python3 "$helpers/report.py" "$tmp" "$requests" "$concurrency" "$ka_requests" "$bulk_mb" \
  "$lat_requests" "$tmp/bench-compare.svg" >"$table"
cat "$table"

bench_doc_gate "$invalid"

# --- doc --------------------------------------------------------------------------
# Version strings (some of these tools exit non-zero after printing them).
bench_tool_versions
sslsplit_version="$(sslsplit -V 2>&1 | awk 'NR == 1 {print $2}')" || true
sslsplit_openssl="$(sslsplit -V 2>&1 | sed -n 's/^rtlinked against OpenSSL \([^ ]*\).*/\1/p' | head -1)" || true
sslsplit_package="$(dpkg-query -W -f '${Version}' sslsplit 2>/dev/null)" || true
py_version="$("$py" -c 'import ssl, sys; print(sys.version.split()[0], ssl.OPENSSL_VERSION)')" || true
commit="$(git -C "$root" rev-parse --short HEAD 2>/dev/null)" || true
# Kernel objects of one TCP socket (object sizes from /proc/slabinfo).
slab="$(awk '$1 == "TCP" {t = $4} $1 == "sock_inode_cache" {i = $4} $1 == "filp" {f = $4}
  $1 == "dentry" {d = $4} END { if (t) printf "%d %d %d %d %d", t + i + f + d, t, i, f, d }' /proc/slabinfo 2>/dev/null)" || true
read -r slab_total slab_tcp slab_inode slab_filp slab_dentry <<<"${slab:-}"
minutes=$(((SECONDS + 59) / 60))

section="$tmp/section.md"
{
  cat <<EOF
## Side by side: no appliance, SSLsplit, tlsgate

Reproduce (root): \`$cmdline\` (about $minutes min here; own namespaces
tgc-cli/tgc-gw/tgc-srv, so it can run beside the default lab; installs apache2-utils,
nginx-light, curl, sslsplit, nftables, conntrack, python3 and openssl if missing).
Machine: $(nproc) vCPU ${cpu:-unknown CPU}${hyper:+ ($hyper guest)}, $(awk '/^MemTotal:/ {printf "%.0f GiB", $2 / 2^20}' /proc/meminfo),
Linux $(uname -r), run on $(date -u +%Y-%m-%d) at commit ${commit:-?}.
SSLsplit ${sslsplit_version:-?} (Debian package ${sslsplit_package:-?}, OpenSSL ${sslsplit_openssl:-?}),
${nginx_version:-nginx}, ApacheBench ${ab_version:-?}, curl ${curl_version:-?}, Python ${py_version:-?}.

![Medians of the run below: rates, latency, interceptor CPU and memory per connection](bench-compare.svg)

### Setup

The lab of \`scripts/lab-up.sh\`: client 198.18.0.1 in tgc-cli, nginx 198.18.0.2 in tgc-srv
(\`tests/lab/origin.sh\`: TLS 1.2/1.3, an ECDSA P-256 certificate for origin.test, restarted
on a copy of its config with \`worker_connections 16384\`, \`worker_rlimit_nofile 20000\`,
\`keepalive_timeout 600s\`, \`keepalive_requests 1000000\` and no access log, so that the
kept-alive and held connections are never closed by nginx), one /24, joined through
tgc-gw. Three paths, measured in the same run, alternating a, b, c, median of ${runs} runs:

- **(a) no appliance**: a Linux bridge br0 in tgc-gw joining gwc0 and gws0, bridge
  netfilter off (bench-tls' baseline).
- **(b) SSLsplit, transparent and inline** (the preferred placement of the issue; it
  worked as is): the same bridge with \`nf_call_iptables 1\` (br_netfilter is built into
  this kernel) and 198.18.0.3/24 on br0, and in tgc-gw the nftables rule
  \`ip daddr 198.18.0.2 tcp dport 443 redirect to :8443\` (nat prerouting). Bridged frames
  of the client's connections to 198.18.0.2:443 are redirected to the local listener of
  \`sslsplit -o VerifyPeer=yes -c ca.pem -k ca.key -K leaf.key -l connect.log ssl 0.0.0.0 8443\`,
  which finds the original destination with SO_ORIGINAL_DST (its netfilter NAT engine) and
  connects to it. The client still talks to 198.18.0.2 and sees a certificate forged by
  SSLsplit. \`ssl\` (not \`https\`): no HTTP rewriting, so keep-alive stays as the client
  asked, as through tlsgate. The CA is the one \`tlsgate ca init\` made for (c) (ECDSA
  P-256), the forged leaves get an ECDSA P-256 key (\`-K\`; SSLsplit's default is a new
  2048-bit RSA key). **Upstream verification: on**: \`VerifyPeer=yes\` with
  \`SSL_CERT_FILE\` = the origin's certificate, the same trust tlsgate gets. The script
  checks it at start: with the CA as the only trust SSLsplit refuses the origin
  ("certificate verify failed") and the client gets no page. SSLsplit runs as Debian
  ships it: as root, it drops privileges to nobody in a child that does the work; its
  connect log gets one line per connection (tlsgate's connection log is on in (c) too).
  Each start of (b) flushes tgc-gw's connection tracking (\`conntrack -F\`), and nftables
  counters count the connections redirected and every SYN to 198.18.0.2:443 that the
  bridge forwarded instead, i.e. a connection that bypassed SSLsplit (plus, to diagnose
  one, the SYNs conntrack found invalid or matched to an existing entry).
- **(c) tlsgate intercepting TLS on 443** (bench-tls' (c)): \`tlsgate run\` on
  configs/lab.toml (one poll-mode worker, DPDK af_packet on gwc0/gws0) plus
  \`[intercept] tcp_ports = [443], mode = "tls"\`, the same CA, \`upstream_trust\` = the
  origin's certificate, a connection log, \`--stats-interval 0.2\`.

### Workloads

In each run and path, in this order, on one start of the interceptor:

1. A check that the path is what it claims: curl trusting only the forging CA must get the
   page in (b) and (c), curl trusting only the origin's certificate in (a).
2. **New connections per second**: \`ab -r -s 10 -n ${requests} -c ${concurrency}
   https://origin.test/index.html\` (one TCP connection and one full TLS handshake per
   request, a 23-byte body; ab neither keeps alive without -k nor resumes TLS sessions).
3. **Kept-alive requests per second**: \`ab -k -n ${ka_requests} -c ${concurrency}\` on the same URL
   (${concurrency} connections, every request kept alive).
4. **Latency**: curl, one process, ${lat_requests} sequential requests each on a new connection
   (\`Connection: close\`, \`--no-sessionid\`: a full handshake each), then ${lat_requests} on one
   kept-alive connection; \`-w %{time_total}\` per request, p50 and p99 per run.
5. **Bulk**: \`curl --http1.1 -o /dev/null https://origin.test/bulk.bin\`, ${bulk_mb} MB of
   random bytes (MB = 10^6 B; MB/s = size / curl's total time, connection and TLS
   included), one connection; in run 1 a second download checks the body's SHA-256.
6. **CPU** around workloads 2, 3 and 5: the interceptor's utime + stime from
   /proc/PID/stat (SSLsplit: all its processes and threads; tlsgate: its process, worker
   and main thread), and for tlsgate also its worker's busy time from the counters; for
   every path, (a) included, the **whole machine's** busy CPU over the same windows: the
   \`cpu\` line of /proc/stat (all CPUs; user + nice + system + irq + softirq + steal, i.e.
   everything but idle and iowait).

Per run, right before path (c) and after the same wait for a quiet machine, the **rustls floor**
that issue 6's CPU targets compare against: \`crates/mitm/examples/tls_floor.rs --json\` (in
memory, one thread, its CPU time from /proc/thread-self/schedstat; only the appliance's roles
are timed). Handshakes in plain rustls with ring, configured as tlsgate's two legs and as the
lab's peers: the server role towards a client offering what OpenSSL 3.0 offers (TLS 1.3,
TLS_AES_256_GCM_SHA384 first, an X25519 key share; the forged ECDSA P-256 certificate; two
tickets issued, as tlsgate does), and the client role towards an origin with a self-signed ECDSA
P-256 certificate that issues tickets as nginx does, full (chain verified) and resumed. Bulk:
16 KiB records decrypted and encrypted again in place with ring's AES-256-GCM (the suite
negotiated here; AES-128-GCM and rustls' record layer for reference).

Then, per run, **memory**, for (b) and (c) on a freshly started interceptor:
\`scripts/bench-compare/hold.py\` in tgc-cli opens ${hold} connections (64 handshakes at a
time; each does its TLS handshake, one keep-alive request and reads the response, then stays
idle); the interceptor's VmRSS (all its processes) is read before and with all of them open
(and the holder confirms that all are still open then), and for tlsgate also its report as
printed by \`--stats-interval\` while they are held (\`rss_bytes\`, \`tcp.socket_buffer_bytes\`,
\`tcp.tls_sessions_live\`). Then the holder closes them and the interceptor is stopped.

A run is void unless ab reports no failed request and no non-2xx (with -k, all kept
alive), every download is complete and the checked one byte-exact, the CA check is as
expected, and in (b) and (c) the connections intercepted (SSLsplit's connect-log lines and
the redirect counter, tlsgate's \`tcp.tls_intercepted\`) are no more than the client's new
TCP connections (its ActiveOpens) and at most $tolerance fewer (ab opens and resets a few
surplus connections at its end), no SYN went past SSLsplit, tlsgate's \`tcp.tls_failed\`
is 0; in the memory workload every connection must open (trusting only the forging CA)
and still be open when measured.

### Results

EOF
  cat "$table"
  cat <<EOF

### Reading the numbers

- **CPU: what is comparable.** Both interceptors' CPU is utime + stime from /proc/PID/stat
  (all processes and threads), sampled at each scheduler tick (250 Hz here; this kernel has
  no IRQ time accounting, so softirq work that runs on an interceptor's thread, such as
  delivering the frames it transmits to the client's and the origin's TCP stacks across
  the veths, is charged to it, for SSLsplit and tlsgate alike). That is the comparable
  figure, and the targets are judged on it (the target tables add rows for the whole-machine
  figure, below). tlsgate's worker does not spin a whole core:
  it sleeps after 256 empty polls (up to \`dataplane.idle_sleep_max_us\`, 200 µs), so its
  process CPU follows its load (see "process cores"). Its **worker busy** time is the
  wall-clock time of polls that received frames; it also counts time the thread was
  runnable but preempted (ab, nginx and the kernel share the 2 vCPUs), so it can exceed
  the process CPU: shown for reference, not used for the verdicts.
- **What the CPU figures leave out.** Kernel work done on other threads: for SSLsplit the
  client's packets cross the bridge, br_netfilter, conntrack and the NAT rewrite in the
  sender's context (ab's, curl's) and reach SSLsplit's sockets there; SSLsplit's own TCP
  processing partly happens in softirq on whatever runs. tlsgate's TCP stack (smoltcp) runs
  in its worker, so that work is in its CPU. On balance the comparison favours SSLsplit.
- **Whole-machine CPU: the figure no attribution can bias.** Whichever thread the kernel
  charges a softirq, a veth delivery or a conntrack lookup to, it is busy time of some CPU,
  and /proc/stat's \`cpu\` line counts it once. So the whole-machine CPU per 1,000
  connections and per GB counts, for every path alike, everything the workload cost: the
  client (ab, curl), nginx, the interceptor, the kernel's bridge, netfilter and TCP work
  and its softirqs, wherever they ran. Neither interceptor is favoured by where its kernel
  work lands. Path (a) gives the cost of the same workload with no interceptor, so
  "added by the interceptor" (a path less (a)) is what interception costs the machine.
  The figure also counts whatever else the shared machine ran meanwhile: "less other
  processes" subtracts the CPU of the processes outside the benchmark (a lower bound of
  it, see the caveats; kernel threads are not subtracted, as most of their work here is
  the lab's own), and the per-run lists show how much runs differ.
- **The rustls floor.** What plain rustls and ring need for the same TLS work, without TCP,
  packet I/O, buffering, forging or logging: tlsgate's ratio to it is the cost of its own
  machinery on top. The handshake floor weights the client role by the share of upstream legs
  that resumed in the run (tlsgate keeps the origin's tickets; nginx issues two after a full
  handshake and one after a resumption); on a resumed upstream leg tlsgate reuses its kept
  verdict on the stored chain (\`VerifiedChains\`), so like plain rustls it does not verify the
  chain again on resumption. The AEAD floor is the cipher alone, in place;
  tlsgate's CPU per GB also pays for the frames in and out of af_packet, smoltcp on both legs
  and rustls' copies. The floor is measured in the same run on the same machine, but not at
  the same moment as tlsgate's rows, and in a warm loop: a lower bound, not a model.
- **Key exchange.** SSLsplit ${sslsplit_version:-0.5.5} sets one ECDH group for its
  client-facing side (\`-G\`, default prime256v1; \`-G X25519\` is rejected as an unknown
  curve), so a client that offers an X25519 key share first (OpenSSL 3.0 clients: ab, curl,
  Python) gets a HelloRetryRequest, an extra round trip and a P-256 exchange: see "server
  temp key" per path above (X25519 in (a) and (c), ECDH prime256v1 in (b)). That is
  SSLsplit as packaged, and part of its handshake cost here.
- **Memory.** tlsgate's per-connection RSS is its resident memory; its TCP sockets commit
  \`[tcp]\` rx + tx buffers for both legs when a flow is created (64 KiB each by default:
  \`tcp.socket_buffer_bytes\` per connection), but only the pages written are resident, so
  a connection that moved little data costs far less RSS than it commits; a connection that
  moved bulk data can hold up to the committed size. SSLsplit's RSS leaves out the kernel's
  memory for its two sockets per connection: about ${slab_total:-?} B of slab objects each
  (TCP ${slab_tcp:-?} + sock_inode_cache ${slab_inode:-?} + filp ${slab_filp:-?} + dentry
  ${slab_dentry:-?} B, object sizes from /proc/slabinfo), plus any queued data (none once
  idle); OpenSSL's record buffers are released while idle (SSLsplit sets
  SSL_MODE_RELEASE_BUFFERS). tlsgate has no kernel sockets (0 per connection in the table).
  tlsgate's counters are read from its periodic print, not from the final
  \`--report-json\`: that one is written after the worker has stopped and freed its
  sessions, so its \`rss_bytes\` is the idle process's (82 MiB with 3000 sessions still
  counted live, in an earlier version of this script).

### Caveats

- 2 vCPUs are shared by the client (ab, curl, the Python holder), nginx, the kernel's veth,
  bridge and netfilter work and the interceptor. In (c) tlsgate's worker spins on one of
  them, so everything else has about one vCPU; SSLsplit's thread pool and the kernel can
  use both. The rates are bounded by CPU contention as much as by the interceptor.
- The machine is shared with other engineers' builds and tests. Before each path the script
  waits up to 20 s for the other processes to be nearly idle, and it reports the CPU they
  used during each workload ("other processes' CPU", a lower bound: a process that starts
  and ends within a workload is missed). Runs where that is well above 0 are slower than
  they would be alone; compare the per-run lists.
- Not the same TLS stacks: ab, curl, nginx and SSLsplit use OpenSSL, tlsgate uses rustls
  with ring. All legs negotiate TLS 1.3 (TLS_AES_256_GCM_SHA384 with ab, see above). Both
  interceptors may resume their upstream sessions (nginx issues TLS 1.3 tickets); the
  clients never resume.
- tlsgate's shutdown leaves intercepted connections open at the origin. An earlier version
  of this script stopped tlsgate while the ${hold} connections were held (to read its final
  report): nginx kept their upstream legs, which carry the client's addresses and ports,
  ESTABLISHED (keepalive_timeout 600 s). When the client's port allocation came back to
  those ports, in the third run, a new connection through tlsgate on such a port waited
  about 1 s for its SYN-ACK (tlsgate answers the client's SYN once the origin has accepted,
  and the origin's stale socket answers the SYN with an ACK for the old connection):
  13 of 500 sequential connections took ≥ 1 s and ab fell to ~100 conn/s. Reproduced by hand
  (200 held, tlsgate stopped: nginx still had 200 established; curl from one of those ports
  through a new tlsgate: connect 1.00 s, from a fresh port 1 ms). The script now closes the
  held connections before stopping the interceptor.
- The redirection can leak. In an earlier run of this script on this machine (void, before
  the conntrack flush and the counters were added), the third run of (b) had 301 of 2530
  client connections missing from SSLsplit's connect log, and its memory workload 179 of
  3000 connections that received the origin's own (self-signed) certificate: their SYNs had
  been bridged to the origin instead of redirected, so ab (which does not verify) was
  partly measuring the kernel bridge. Runs 1 and 2 were clean. The cause was not pinned
  down (a reproduction with four back-to-back (b) starts and forced client port reuse
  stayed clean); stale connection-tracking entries from earlier runs, once the client's
  ports wrap around, are the suspect. A transparent proxy behind REDIRECT depends on
  conntrack for every connection; tlsgate sees every frame itself.
- SSLsplit is transparent to the client only: it connects to the origin from 198.18.0.3
  (br0's address), whereas tlsgate keeps the client's address on the upstream leg.
  \`VerifyPeer\` verifies the origin's chain; in a manual check (origin certificate for
  other.test, SNI origin.test) SSLsplit ${sslsplit_version:-0.5.5} accepted the name mismatch
  and added the SNI to the forged certificate, while tlsgate (rustls) also checks the name.
- SSLsplit in the foreground prints each connect-log line to stderr as well (to a file
  here). It also logs an error line for each client that closes without close_notify (ab
  and curl often do); these are counted in the log of the run, not treated as failures.
- Latency p99 of ${lat_requests} samples has only $((lat_requests / 100)) samples above it: noisy. "Added"
  latency is the difference of medians, not a per-request difference.
- HTTP/1.x only: ab speaks HTTP/1.0 (keep-alive with -k), curl HTTP/1.1.
EOF
  if [[ -s "$tmp/profile-rate-machine.txt" || -s "$tmp/profile-bulk-machine.txt" ]]; then
    cat <<EOF

### Where the time goes in path (c)

After the runs, one more start of tlsgate, \`perf record -a -e cpu-clock -F 999\` over the
whole machine (both vCPUs; hardware counters are not available in this VM) during the
rate workload (\`ab -n ${requests} -c ${concurrency}\`) and during one ${bulk_mb} MB download.
"Machine": \`perf report --sort comm,dso\` with the idle task left out, each entry a share
of the busy samples (a softirq is charged to whichever thread it interrupted). "tlsgate":
its own samples as shares of its own (\`--pid PID --percentage relative\`), \`--sort dso,sym\`.
Entries of at least 1 %.
EOF
    for what in rate bulk; do
      for view in machine tlsgate; do
        [[ -s "$tmp/profile-$what-$view.txt" ]] || continue
        printf '\n**%s workload, %s**:\n\n```\n' "$what" "$view"
        cat "$tmp/profile-$what-$view.txt"
        printf '```\n'
      done
    done
  fi
} >"$section"

mkdir -p "$(dirname "$doc")"
cp "$tmp/bench-compare.svg" "$chart"
chmod 644 "$chart"
python3 "$here/write-doc-section.py" "$doc" "$section" bench-compare
log "wrote the bench-compare section of $doc and $chart"
