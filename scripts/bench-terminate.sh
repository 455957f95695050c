#!/usr/bin/env bash
# scripts/bench-terminate.sh — TLS termination (stud on the wire) in the
# namespace lab: tlsgate's `[[service]]` mode against hitch, stunnel4 and
# nginx's own TLS, the same client, backend and certificate chain, in one run.
#
# Usage: scripts/bench-terminate.sh [--write-doc] [--runs N] [--requests N]
#          [--concurrency N] [--bulk-mb N] [--paths LIST] [--keep]   (root)
#   --runs: alternating runs per path, the tables show medians (default 3).
#   --requests/--concurrency: ab -n/-c of the termination-rate workload (2000/20).
#   --bulk-mb: size of the bulk file in MB (10^6 bytes, default 200).
#   --paths: comma-separated subset of tlsgate,hitch,stunnel,nginx (default
#     all; without tlsgate nothing is built).
#   --keep: keep the temp dir (logs, reports, ab/curl output, per-run records).
#   --write-doc: (re)write the section between <!-- bench-terminate:begin -->
#   and <!-- bench-terminate:end --> of docs/BENCHMARKS.md and the chart
#   docs/bench-terminate.svg (needs all four paths).
#
# Lab: own namespaces tgs-cli/tgs-gw/tgs-srv (so it runs beside the default
# lab), client 198.18.0.1, server host 198.18.0.2 with the backends of
# tests/lab/terminate-peers.sh (TG_PEERS_TLS=1): nginx, one worker, plaintext
# HTTP/1.1 on 8080 reading the PROXY protocol (v1 or v2) and logging the
# address it names; nginx's TLS listener on 443 with the same chain
# (www.lab.test: ECDSA P-256 leaf + intermediate of the lab PKI), same
# document root. www.lab.test resolves to 198.18.0.2 (/etc/netns/tgs-cli/hosts).
# Paths (alternating, median of --runs):
#   tlsgate: `tlsgate run` in tgs-gw on configs/lab.toml plus one [[service]]
#     (198.18.0.2 and 2001:2::2 port 443, the www chain, backend { port = 8080 },
#     header "proxy-v2", no connection log): it answers the client's SYN
#     itself, terminates TLS and opens the backend leg from the client's address.
#   hitch, stunnel: a Linux bridge in tgs-gw with netfilter, 198.18.0.3 on it,
#     and bench-lab.sh's nftables rule redirecting 198.18.0.2:443 to the
#     daemon's local port 8443 (as bench-compare's SSLsplit); hitch 1 worker,
#     --write-proxy-v2 to 198.18.0.2:8080; stunnel4 (threads), `protocol =
#     proxy` (PROXY v1) to the same backend. They connect from 198.18.0.3.
#   nginx: the bridge without netfilter; the client reaches nginx's own TLS
#     listener on 198.18.0.2:443, which serves the files itself (no separate
#     terminator: the server terminating its own TLS).
# Workloads per run and path, on one start of the terminator:
#   check: curl trusting only the lab root CA gets the page (the chain verifies).
#   rate: ab -r -s 10 -n 2000 -c 20 https://www.lab.test/index.html (a new TCP
#     connection and a full TLS handshake per request: terminations per second).
#   bulk: curl --http1.1 of a 200 MB random file, MB/s = size / time_total; in
#     run 1 a second download checks its SHA-256.
#   CPU around rate and bulk: the terminator's utime + stime (all its
#     processes and threads, /proc/PID/stat) and the backend nginx's.
# Validity (else the run is INVALID and the script exits 1 without writing the
# doc): ab without failures or non-2xx, downloads complete and byte-exact, the
# CA check; for tlsgate/hitch/stunnel every request reached the PROXY backend
# naming the client's address 198.18.0.1 and none reached nginx's TLS listener
# (a connection that bypassed the terminator), for nginx the reverse; for
# tlsgate its report's tcp.terminated covers the requests.
#
# Installs apache2-utils, nginx-light, curl, hitch, stunnel4, haproxy,
# nftables, conntrack, python3 and openssl with apt-get if missing. Builds
# tlsgate (release) once and runs a private copy. Always cleans up (trap).
# Bounded: every command has a timeout, a watchdog ends the run after 25 min.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
doc="$root/docs/BENCHMARKS.md"
chart="$root/docs/bench-terminate.svg"

export TG_NS_CLI=tgs-cli TG_NS_GW=tgs-gw TG_NS_SRV=tgs-srv TG_NS_BOX=tgs-box TG_NS_LG=tgs-lg TG_NS_IMP=tgs-imp
# shellcheck source=scripts/lab-env.sh
. "$here/lab-env.sh"
# shellcheck source=scripts/bench-lab.sh
. "$here/bench-lab.sh"

write_doc=0 keep=0 runs=3 requests=2000 concurrency=20 bulk_mb=200 paths="tlsgate,hitch,stunnel,nginx"
cmdline="scripts/bench-terminate.sh${*:+ $*}"
while (($#)); do
  case "$1" in
    --write-doc) write_doc=1 ;;
    --keep) keep=1 ;;
    --runs) runs="$2"; shift ;;
    --requests) requests="$2"; shift ;;
    --concurrency) concurrency="$2"; shift ;;
    --bulk-mb) bulk_mb="$2"; shift ;;
    --paths) paths="$2"; shift ;;
    -h|--help) sed -n '2,56p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "bench-terminate: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
[[ $(id -u) -eq 0 ]] || { echo "bench-terminate: must run as root" >&2; exit 1; }
for n in "$runs" "$requests" "$concurrency" "$bulk_mb"; do
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "bench-terminate: $n is not a positive number" >&2; exit 2; }
done
IFS=, read -r -a selected <<<"$paths"
for p in "${selected[@]}"; do
  [[ "$p" =~ ^(tlsgate|hitch|stunnel|nginx)$ ]] || { echo "bench-terminate: unknown path $p" >&2; exit 2; }
done
((!write_doc || ${#selected[@]} == 4)) || { echo "bench-terminate: --write-doc needs all four paths" >&2; exit 2; }
with_tlsgate=0
[[ ",$paths," == *,tlsgate,* ]] && with_tlsgate=1

log() { echo "bench-terminate: $*" >&2; }

# --- packages -------------------------------------------------------------------
bench_install_missing ab:apache2-utils nginx:nginx-light curl:curl hitch:hitch stunnel4:stunnel4 \
  haproxy:haproxy nft:nftables conntrack:conntrack python3:python3 openssl:openssl

# --- state and cleanup ------------------------------------------------------------
bench_begin bench-terminate
peers="$tmp/peers"
term_pid=""
nft_table=bench_terminate   # bench-lab.sh's redirect rules' table, in the gw namespace
bulk_bytes=$((bulk_mb * 1000000))

# The hitch or stunnel4 under test: SIGTERM, SIGKILL after 10 s.
stop_terminator() {
  [[ -n "$term_pid" ]] || return 0
  kill -TERM "$term_pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$term_pid" 2>/dev/null || break; sleep 0.2; done
  kill -KILL "$term_pid" 2>/dev/null || true
  wait "$term_pid" 2>/dev/null || true
  term_pid=""
}

# bench_cleanup's hooks: the terminator and the backends go first; a kept
# temp dir keeps no bulk file.
bench_stop() {
  stop_terminator
  [[ -d "$peers" ]] && timeout 30 "$root/tests/lab/terminate-peers.sh" stop "$peers"
}
bench_drop_large() { rm -f "$peers/www/bulk.bin"; }

bench_watchdog 1500

# --- build, lab, peers ------------------------------------------------------------
((with_tlsgate)) && bench_build_tlsgate
timeout 120 "$here/lab-up.sh" >/dev/null
for f in iptables ip6tables arptables; do
  ip netns exec "$TG_NS_GW" sysctl -qw "net.bridge.bridge-nf-call-$f=0" 2>/dev/null || true
done
TG_PEERS_TLS=1 TG_PEERS_NAMES=www timeout 120 "$root/tests/lab/terminate-peers.sh" start "$peers"
log "writing a ${bulk_mb} MB random file to the backend"
timeout 300 head -c "$bulk_bytes" /dev/urandom >"$peers/www/bulk.bin"
bulk_sha="$(timeout 120 sha256sum "$peers/www/bulk.bin" | cut -d' ' -f1)"
bench_client_hosts www.lab.test
url="https://www.lab.test/index.html"
bulk_url="https://www.lab.test/bulk.bin"
cp "$peers/pki/root.pem" "$tmp/trust.pem"   # the clients trust the lab root only

# --- the terminators' configurations ------------------------------------------------
service_config() {  # prints tlsgate's config (no connection log: the others log errors only)
  tg_lab_config "$root/configs/lab.toml"
  cat <<EOF

[[service]]
name = "www"
destinations = ["$TG_SRV_V4", "$TG_SRV_V6"]
port = 443
certificates = [ { chain = "$peers/pki/www.pem", key = "$peers/pki/www.key" } ]
backend = { port = 8080 }
header = "proxy-v2"
EOF
}
if ((with_tlsgate)); then
  service_config >"$tmp/service.toml"
  timeout 60 "$tmp/tlsgate" check --config "$tmp/service.toml" >/dev/null
fi
cat "$peers/pki/www.pem" "$peers/pki/www.key" >"$tmp/hitch.pem"
chmod 600 "$tmp/hitch.pem"
cat >"$tmp/stunnel.conf" <<EOF
foreground = yes
pid =
debug = warning
[www]
accept = $sp_port
connect = $TG_SRV_V4:8080
cert = $peers/pki/www.pem
key = $peers/pki/www.key
protocol = proxy
EOF

# --- paths ------------------------------------------------------------------------
start_path() {  # path run
  local path="$1" run="$2"
  case "$path" in
    tlsgate)
      start_tlsgate "$tmp/service.toml" "$tmp/tlsgate-$run.log" --report-json "$tmp/report-$run.json"
      ;;
    hitch|stunnel)
      redirect_up
      if [[ "$path" == hitch ]]; then
        ip netns exec "$TG_NS_GW" hitch --frontend="[*]:$sp_port" --backend="[$TG_SRV_V4]:8080" \
          --write-proxy-v2=on --workers=1 --user=nobody --daemon=off "$tmp/hitch.pem" \
          >"$tmp/hitch-$run.log" 2>&1 &
      else
        ip netns exec "$TG_NS_GW" stunnel4 "$tmp/stunnel.conf" >"$tmp/stunnel-$run.log" 2>&1 &
      fi
      term_pid=$!
      for _ in $(seq 100); do
        ip netns exec "$TG_NS_GW" ss -Hltn "sport = :$sp_port" | grep -q . && break
        kill -0 "$term_pid" 2>/dev/null || break
        sleep 0.1
      done
      ip netns exec "$TG_NS_GW" ss -Hltn "sport = :$sp_port" | grep -q . ||
        { log "$path did not start:"; cat "$tmp/$path-$run.log" >&2; exit 1; }
      ;;
    nginx) bridge_up 0 ;;
  esac
  reachable || { log "path ($path): $TG_SRV_V4 unreachable"; exit 1; }
}

stop_path() {  # path run
  local path="$1" run="$2"
  case "$path" in
    tlsgate)
      stop_tlsgate
      [[ -s "$tmp/report-$run.json" ]] || { log "no report from tlsgate (run $run)"; exit 1; }
      ;;
    hitch|stunnel) stop_terminator; redirect_down ;;
    nginx) ip -n "$TG_NS_GW" link del br0 ;;
  esac
}

terminator_pids() {  # path
  case "$1" in
    tlsgate) echo "$tg_pid" ;;
    hitch) ns_pids_named "$TG_NS_GW" hitch ;;
    stunnel) ns_pids_named "$TG_NS_GW" stunnel4 ;;
  esac
  return 0
}

# "terminator backend" CPU seconds so far (the nginx path has no separate terminator).
cpu_now() {  # path
  local term=0
  # shellcheck disable=SC2046  # word splitting of the pid lists on purpose
  [[ "$1" == nginx ]] || term="$(proc_cpu_seconds $(terminator_pids "$1"))"
  # shellcheck disable=SC2046
  echo "$term $(proc_cpu_seconds $(ns_pids_named "$TG_NS_SRV" nginx))"
}
cpu_delta() {  # "term backend" before, after; prints the differences
  awk -v a="$1" -v b="$2" 'BEGIN { split(a, x, " "); split(b, y, " "); printf "%.2f %.2f\n", y[1] - x[1], y[2] - x[2] }'
}

lines() { wc -l <"$1"; }
# Requests the PROXY backend logged since line $2 naming the client's address.
proxied_since() {  # log first-line
  tail -n "+$(($2 + 1))" "$1" | awk -v c="$TG_CLI_V4" '$1 == c' | wc -l
}

ca_check() {  # prints "ok" or "FAILED"
  local code
  code="$(timeout 30 ip netns exec "$TG_NS_CLI" curl --http1.1 -sS --cacert "$tmp/trust.pem" --max-time 10 \
    -o /dev/null -w '%{http_code}' "$url" 2>"$tmp/ca-check.err")" || true
  if [[ "$code" == 200 ]]; then echo ok; else
    log "curl trusting only the lab root failed: $(head -c 300 "$tmp/ca-check.err")"
    echo FAILED
  fi
}

# --- runs -------------------------------------------------------------------------
results="$tmp/results.kv"
: >"$results"
invalid=0
log "warm-up on the nginx path"
start_path nginx w
https_rate "$tmp/ab-warmup.txt" >/dev/null
bulk_rate "$tmp/curl-warmup.txt" >/dev/null
stop_path nginx w

for run in $(seq "$runs"); do
  for path in "${selected[@]}"; do
    log "run $run/$runs, $path"
    start_path "$path" "$run"
    check="$(ca_check)"
    pp0="$(lines "$peers/pp-v2.log")" tls0="$(lines "$peers/tls.log")"
    c0="$(cpu_now "$path")"
    rate="$(https_rate "$tmp/ab-$path-$run.txt")"
    c1="$(cpu_now "$path")"
    mbps="$(bulk_rate "$tmp/curl-$path-$run.txt")"
    c2="$(cpu_now "$path")"
    sha=-
    ((run == 1)) && sha="$(bulk_check)"
    read -r rate_term rate_backend <<<"$(cpu_delta "$c0" "$c1")"
    read -r bulk_term bulk_backend <<<"$(cpu_delta "$c1" "$c2")"
    proxied="$(proxied_since "$peers/pp-v2.log" "$pp0")"
    direct=$(($(lines "$peers/tls.log") - tls0))
    stop_path "$path" "$run"
    why=""
    [[ "$rate" == failed ]] && why+=" ab failed;"
    [[ "$mbps" == failed ]] && why+=" download failed;"
    [[ "$sha" == MISMATCH ]] && why+=" body not byte-exact;"
    [[ "$check" == ok ]] || why+=" CA check failed;"
    if [[ "$path" == nginx ]]; then
      ((proxied == 0)) || why+=" $proxied requests reached the PROXY backend;"
      ((direct >= requests)) || why+=" nginx's TLS listener logged $direct of $requests requests;"
    else
      ((direct == 0)) || why+=" $direct requests bypassed $path to nginx's TLS listener;"
      ((proxied >= requests)) || why+=" the PROXY backend logged $proxied of $requests requests from $TG_CLI_V4;"
    fi
    if [[ "$path" == tlsgate ]]; then
      terminated="$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["tcp"]["terminated"])' \
        "$tmp/report-$run.json" 2>/dev/null || echo 0)"
      ((terminated >= requests)) || why+=" tcp.terminated $terminated for $requests requests;"
    fi
    if [[ -n "$why" ]]; then
      log "INVALID: $path run $run:$why"
      invalid=1
    fi
    log "  $rate conn/s (CPU s: $path $rate_term, backend $rate_backend); $mbps MB/s (CPU s: $path $bulk_term," \
        "backend $bulk_backend); check $check, sha $sha, proxied $proxied, direct $direct"
    echo "path=$path run=$run rate=$rate bulk=$mbps rate_term=$rate_term rate_backend=$rate_backend" \
      "bulk_term=$bulk_term bulk_backend=$bulk_backend sha=$sha" >>"$results"
  done
done
((invalid == 0)) || { log "INVALID run: see above; nothing written"; exit 1; }

# --- tables -----------------------------------------------------------------------
table="$tmp/table.md"
python3 "$here/bench-terminate/report.py" "$results" "$requests" "$concurrency" "$bulk_mb" "$tmp/chart.svg" >"$table"
cat "$table"
((write_doc)) || exit 0

# --- the doc section ----------------------------------------------------------------
commit="$(git -C "$root" rev-parse --short HEAD 2>/dev/null || true)"
cpu="$(lscpu | sed -n 's/^Model name: *//p' | head -1)"
hyper="$(lscpu | sed -n 's/^Hypervisor vendor: *//p' | head -1)"
version_of() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null || echo "?"; }
section="$tmp/section.md"
{
  cat <<EOF
## TLS termination: tlsgate \`[[service]]\` vs hitch, stunnel4 and nginx

Reproduce (root): \`$cmdline\` (about 10 minutes; own namespaces tgs-cli/tgs-gw/tgs-srv, so it
can run beside the default lab). Machine: $(nproc) vCPU ${cpu:-unknown CPU}${hyper:+ ($hyper guest)},
Linux $(uname -r), run on $(date -u +%Y-%m-%d) at commit ${commit:-?}. hitch $(version_of hitch),
stunnel4 $(version_of stunnel4), nginx $(version_of nginx-light) (Debian packages), ApacheBench
$(version_of apache2-utils), curl $(version_of curl).

![Medians of the run below: terminations per second, bulk throughput and CPU](bench-terminate.svg)

### Setup

Client 198.18.0.1 in tgs-cli, the server host 198.18.0.2 in tgs-srv with the backends of
\`tests/lab/terminate-peers.sh\`: nginx (one worker) serving the same files as plaintext HTTP/1.1
on 8080 behind \`listen ... proxy_protocol\` (it logs the client address the header names), and
its own TLS listener on 443 with the same chain. The chain is the lab PKI's \`www.lab.test\`
(ECDSA P-256 leaf and intermediate under a lab root); every client trusts only that root.
Four paths, alternating, median of ${runs} runs:

- **tlsgate**: \`tlsgate run\` in tgs-gw on configs/lab.toml (one poll-mode worker, DPDK
  af_packet) plus one \`[[service]]\` (198.18.0.2 and 2001:2::2 port 443, the www chain,
  \`backend = { port = 8080 }\`, \`header = "proxy-v2"\`, no connection log): the appliance
  answers the client's SYN itself, terminates TLS (rustls) and opens the backend leg from the
  client's own address.
- **hitch** (1 worker, \`--write-proxy-v2\`) and **stunnel4** (threads, \`protocol = proxy\`,
  i.e. PROXY v1, \`debug = warning\`: no line per connection) in tgs-gw, transparent and
  inline as bench-compare's SSLsplit: a Linux bridge with netfilter, 198.18.0.3 on it, and the
  nftables rule
  \`ip daddr 198.18.0.2 tcp dport 443 redirect to :8443\`. They reach the backend from
  198.18.0.3 and name the client in the PROXY header.
- **nginx**: the bridge without netfilter; the client reaches nginx's own TLS listener on the
  server, which serves the files itself (the server terminating its own TLS, no terminator
  box).

### Workloads

1. A check that curl trusting only the lab root gets the page.
2. **Terminations per second**: \`ab -r -s 10 -n ${requests} -c ${concurrency} https://www.lab.test/index.html\`
   (a new TCP connection and a full TLS handshake per request; ab neither keeps alive nor
   resumes).
3. **Bulk**: \`curl --http1.1 -o /dev/null https://www.lab.test/bulk.bin\`, ${bulk_mb} MB of random
   bytes, one connection (MB = 10^6 B; connection and handshake included); in run 1 a second
   download checks the SHA-256.
4. **CPU** around 2 and 3: utime + stime of the terminator's processes and of the backend nginx
   (/proc/PID/stat); for the nginx path the "terminator" column is empty and nginx's CPU is
   both jobs.

A run is void unless ab reports no failure, the downloads are complete and byte-exact, and,
through a terminator, every request reached the PROXY backend naming 198.18.0.1 and none
reached nginx's TLS listener (a connection that bypassed the terminator), through nginx the
reverse; tlsgate's \`tcp.terminated\` must cover the requests.

### Results

EOF
  cat "$table"
  cat <<'EOF'

### Caveats

- 2 vCPUs are shared by ab/curl, the terminator, the backend nginx and the kernel's veth and
  bridge work; tlsgate's worker polls on one of them. The rates are bounded by CPU contention
  as much as by the terminator.
- Placement differs: hitch and stunnel4 receive the client's connections through the kernel
  (bridge, br_netfilter, conntrack, REDIRECT) and open a second kernel TCP connection to the
  backend; tlsgate terminates both TCP legs in its own userspace stack; nginx needs neither
  (one TCP connection, on the server). Kernel work done on other threads is not in the
  terminators' CPU columns.
- hitch runs one worker (its default) as tlsgate runs one poll-mode worker; stunnel4 uses a
  thread per connection and can use both vCPUs.
- Not the same TLS stacks: hitch, stunnel4, nginx, ab and curl use OpenSSL, tlsgate uses
  rustls with ring. stunnel4 sends PROXY v1 (it has no v2).
EOF
} >"$section"
mkdir -p "$(dirname "$doc")"
cp "$tmp/chart.svg" "$chart"
chmod 644 "$chart"
python3 "$here/write-doc-section.py" "$doc" "$section" bench-terminate
log "wrote the bench-terminate section of $doc and $chart"
