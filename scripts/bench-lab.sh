# scripts/bench-lab.sh — the harness shared by the lab benchmarks (bench-splice.sh,
# bench-compare.sh, bench-wan.sh, bench-tls.sh, bench-inspect.sh, bench-concurrency.sh,
# bench-terminate.sh, bench-memif.sh, bench-starttls.sh, bench-drivers.sh); sourced, not run. Expects
# log(), $root, $keep and the lab variables of lab-env.sh. bench_begin makes $tmp and installs the
# one cleanup; the helpers use $tg_pid (the tlsgate under test) and $watchdog_pid; the
# SSLsplit, tls_config and origin helpers also use $origin.
# shellcheck shell=bash
# The globals below ($root, $tmp, $tg_pid, $watchdog_pid, ...) belong to the sourcing script.
# shellcheck disable=SC2034,SC2154
bench_lib_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# --- temp dir and the one cleanup -------------------------------------------------
# bench_begin NAME: $tmp = a fresh /tmp/NAME.XXXXXX (world-readable: servers in the
# namespaces read it) and an EXIT trap running bench_cleanup. The script may define
# bench_stop (its own processes and state, stopped first) and bench_drop_large (what
# is too large to keep when the logs are kept), and set $origin (tests/lab/origin.sh's
# directory) and $nft_table (SSLsplit's redirection, path (b)). A benchmark that uses
# no namespaces (bench-memif.sh) sets bench_no_lab=1: tlsgate then runs here, and the
# cleanup leaves the lab's namespaces and interfaces alone.
bench_begin() {  # name
  tmp="$(mktemp -d "/tmp/$1.XXXXXX")"
  chmod 755 "$tmp"
  tg_pid="" watchdog_pid="" made_netns_etc=0
  trap bench_cleanup EXIT
  trap 'exit 130' INT TERM
}

# Stops everything the benchmark may have started, takes the lab down and
# removes $tmp unless it failed or --keep; exits with the script's status.
bench_cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  declare -F bench_stop >/dev/null && bench_stop
  stop_sslsplit
  stop_tlsgate
  if ((!${bench_no_lab:-0})); then
    [[ -n "${nft_table:-}" ]] && redirect_down
    ip -n "$TG_NS_GW" link del br0 2>/dev/null
    [[ -n "${origin:-}" && -d "${origin:-}" ]] && timeout 30 "$root/tests/lab/origin.sh" stop "$origin"
    timeout 60 "$bench_lib_dir/lab-down.sh" >/dev/null 2>&1
  fi
  ((made_netns_etc)) && rm -rf "$netns_etc"
  [[ -n "$watchdog_pid" ]] && kill "$watchdog_pid" 2>/dev/null
  if ((rc || keep)) && [[ -d "$tmp" ]]; then
    declare -F bench_drop_large >/dev/null && bench_drop_large
    log "logs kept in $tmp (rc $rc)"
  else
    rm -rf "$tmp"
  fi
  exit "$rc"
}

# After the results: exits 1 when a run was invalid (the doc is not written),
# 0 without --write-doc; returns when the doc is to be written.
bench_doc_gate() {  # invalid (0|1)
  if (($1)); then
    log "some runs were INVALID (see the results and the log above); not writing the doc"
    exit 1
  fi
  ((write_doc)) || exit 0
}

# The server's name (origin.test unless given) resolves in the client namespace:
# /etc/netns/$TG_NS_CLI/hosts, made (and removed by bench_cleanup) unless it
# exists; an existing one must name it.
bench_client_hosts() {  # [name]
  local name="${1:-origin.test}"
  netns_etc="/etc/netns/$TG_NS_CLI"
  if [[ ! -e "$netns_etc" ]]; then
    mkdir -p "$netns_etc"
    made_netns_etc=1
    printf '127.0.0.1 localhost\n%s %s\n' "$TG_SRV_V4" "$name" >"$netns_etc/hosts"
  fi
  grep -q "$name" "$netns_etc/hosts" 2>/dev/null ||
    { log "$netns_etc/hosts exists but does not name $name"; exit 1; }
}

# Stops the tlsgate under test: SIGINT, then SIGKILL after 20 s.
stop_tlsgate() {
  stop_interrupted "$tg_pid"
  tg_pid=""
}

# Stops a child process (nothing when PID is empty): SIGINT, then SIGKILL after 20 s.
stop_interrupted() {  # pid
  [[ -n "$1" ]] || return 0
  kill -INT "$1" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || break; sleep 0.2; done
  kill -KILL "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

# --- perf profiles -------------------------------------------------------------------
# Succeeds when `perf record -e cpu-clock` works here (no hardware counters in a VM;
# cpu-clock samples every thread's CPU time).
bench_perf_usable() {
  command -v perf >/dev/null || return 1
  timeout 30 perf record -q -e cpu-clock -o "$tmp/perf-check.data" -- true >/dev/null 2>&1
  local rc=$?
  rm -f "$tmp/perf-check.data"
  return "$rc"
}

# Writes to OUT the entries of at least 1 % of `perf report --sort SORT` on DATA
# (more perf report arguments may follow, e.g. --pid PID).
bench_perf_top() {  # data out sort [perf report args...]
  local data="$1" out="$2" sort="$3"
  shift 3
  timeout 120 perf report -i "$data" --stdio --no-children --sort "$sort" --percent-limit 1 "$@" \
    2>/dev/null | grep -E '^ +[0-9.]+%' | head -25 >"$out" || true
}

# Writes to OUT where a whole-machine recording's busy time went: `perf report --sort
# comm,dso` without the idle task (swapper), each entry as a share of the busy samples,
# those of at least 1 %.
bench_perf_busy() {  # data out
  timeout 120 perf report -i "$1" --stdio --no-children --sort comm,dso --percent-limit 0 \
    2>/dev/null | grep -E '^ +[0-9.]+%' |
    awk '$2 != "swapper" { rest = $0; sub(/^ *[0-9.]+% */, "", rest); line[NR] = rest
        share[NR] = $1 + 0; busy += $1 + 0 }
      END { for (i = 1; i <= NR; i++) if ((i in share) && busy > 0 && share[i] * 100 / busy >= 1)
              printf "%8.2f%%  %s\n", share[i] * 100 / busy, line[i] }' | head -25 >"$2" || true
}

# Stops the tlsgate under test; its --report-json file must have been written.
stop_tlsgate_reported() {  # report.json what (for the message)
  stop_tlsgate
  [[ -s "$1" ]] || { log "no report from tlsgate ($2)"; exit 1; }
}

# Waits (up to TRIES x 0.2 s) until the latest --stats-interval print shows no
# live session: intercepted sessions closed, so the logs and report are complete.
wait_sessions_closed() {  # tlsgate-log tries
  for _ in $(seq "$2"); do
    [[ "$(live_sessions "$1")" == 0 ]] && break
    sleep 0.2
  done
}

# The doc's description of the machine and the tools: $cpu, $hyper, $nginx_version,
# $ab_version, $curl_version (empty when unknown; some of these tools exit non-zero
# after printing their version).
bench_tool_versions() {
  cpu="$(lscpu | sed -n 's/^Model name: *//p' | head -1)" || true
  hyper="$(lscpu | sed -n 's/^Hypervisor vendor: *//p' | head -1)" || true
  nginx_version="$(nginx -v 2>&1 | sed 's/^nginx version: //')" || true
  ab_version="$(ab -V 2>/dev/null | sed -n 's/^This is ApacheBench, Version \([^ ]*\).*/\1/p' | head -1)" || true
  curl_version="$(curl --version 2>/dev/null | awk 'NR == 1 {print $2}')" || true
}

# Whether the client reaches the server (IPv4 ping, up to 5 s).
reachable() {
  for _ in $(seq 20); do
    ip netns exec "$TG_NS_CLI" ping -c1 -W1 -q "$TG_SRV_V4" >/dev/null 2>&1 && return 0
    sleep 0.25
  done
  return 1
}

# Path (a), no appliance: the kernel bridge br0 joins the gw namespace's two links.
kernel_path_up() {
  bridge_up 0
  path_reachable a
}

# Exits unless the client reaches the server once PATH is up.
path_reachable() {  # path
  reachable || { log "path ($1): $TG_SRV_V4 unreachable"; exit 1; }
}

# Bounds the whole benchmark: SIGTERM to the script after $1 seconds.
bench_watchdog() {
  local limit="$1"
  (
    trap 'kill "$sleeper" 2>/dev/null; exit 0' TERM
    sleep "$limit" &
    sleeper=$!
    wait "$sleeper"
    log "watchdog: $((limit / 60)) min limit reached"
    kill -TERM $$
  ) 2>/dev/null &
  watchdog_pid=$!
}

# Builds tlsgate (release) and keeps a private copy in $tmp/tlsgate: other
# engineers may rebuild target/release/tlsgate meanwhile.
bench_build_tlsgate() {
  log "building tlsgate (release)"
  (cd "$root" && timeout 1200 cargo build --release --quiet -p tlsgate)
  cp "$root/target/release/tlsgate" "$tmp/tlsgate"
}

# Installs the Debian packages of the missing commands: each argument is
# "command:package" (package may list several, comma-separated).
bench_install_missing() {
  local need=() pair packages
  for pair in "$@"; do
    packages="${pair#*:}"
    # shellcheck disable=SC2206  # split the comma-separated list on purpose
    command -v "${pair%%:*}" >/dev/null || need+=(${packages//,/ })
  done
  ((${#need[@]})) || return 0
  log "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  timeout 600 apt-get install -y --no-install-recommends "${need[@]}" >/dev/null ||
    { timeout 300 apt-get update >/dev/null &&
      timeout 600 apt-get install -y --no-install-recommends "${need[@]}" >/dev/null; }
}

# Starts the tlsgate under test in the gw namespace (here with bench_no_lab=1)
# ($tg_pid) and waits up to 30 s for "tlsgate: running"; extra arguments go to
# `tlsgate run`.
start_tlsgate() {  # config log [run arguments...]
  local config="$1" tglog="$2" in_gw=(ip netns exec "$TG_NS_GW")
  shift 2
  ((${bench_no_lab:-0})) && in_gw=()
  "${in_gw[@]}" "$tmp/tlsgate" run --config "$config" "$@" >"$tglog" 2>&1 &
  tg_pid=$!
  wait_tlsgate_running "$tglog" "$tg_pid"
}

# Waits up to 30 s for "tlsgate: running" in a tlsgate's log while it lives;
# exits when it does not come.
wait_tlsgate_running() {  # log pid
  for _ in $(seq 150); do
    grep -q '^tlsgate: running' "$1" && return 0
    kill -0 "$2" 2>/dev/null || break
    sleep 0.2
  done
  log "tlsgate did not start:"; cat "$1" >&2; exit 1
}

# The worker's cumulative "busy S s, idle S s" from the latest --stats-interval print.
busy_snapshot() {  # tlsgate log; prints "busy idle" (seconds)
  grep 'worker 0: busy' "$1" | tail -1 | sed -E 's/.*busy ([0-9.]+) s, idle ([0-9.]+) s.*/\1 \2/'
}

# Sessions live in the latest --stats-interval print.
live_sessions() {  # tlsgate log
  grep '^tcp: ' "$1" | tail -1 | sed -E 's/.* ([0-9]+) sessions live.*/\1/'
}

# New HTTPS connections per second: ab -n $requests -c $concurrency $url from the
# client namespace (a new TCP connection and TLS handshake per request).
https_rate() {  # output-file; prints conn/s, or "failed"
  local out="$1"
  timeout 300 ip netns exec "$TG_NS_CLI" \
    ab -r -s 10 -n "$requests" -c "$concurrency" "$url" >"$out" 2>&1 || true
  local rate failed non2xx
  rate="$(awk '/^Requests per second:/ {print $4}' "$out")"
  failed="$(awk '/^Failed requests:/ {print $3}' "$out")"
  non2xx="$(awk '/^Non-2xx responses:/ {print $3}' "$out")"
  if [[ -n "$rate" && "${failed:-1}" == 0 && -z "$non2xx" ]]; then
    printf '%.0f\n' "$rate"
  else
    log "ab failed (failed ${failed:-?}, non-2xx ${non2xx:-0}): $(grep -m1 -E 'SSL|apr_|timeout|error' "$out" || true)"
    echo failed
  fi
}

# A namespace's TCP counter from /proc/net/snmp: tcp_counter NS ActiveOpens
# (connections opened so far), tcp_counter NS OutRsts (RSTs sent so far).
# shellcheck disable=SC2016  # awk program
tcp_counter() {  # namespace counter
  ip netns exec "$1" awk -v want="$2" '/^Tcp:/ { if (!h) { for (i = 1; i <= NF; i++) col[$i] = i; h = 1 }
    else print $col[want] }' /proc/net/snmp
}

# --- the bulk download (origin.test/bulk.bin, $bulk_bytes long, SHA-256 $bulk_sha) ---
# curl in the client namespace trusting $tmp/trust.pem.
bulk_rate() {  # output-file; prints MB/s (10^6 B/s), or "failed"
  local out="$1"
  timeout 200 ip netns exec "$TG_NS_CLI" \
    curl --http1.1 -sS --cacert "$tmp/trust.pem" --max-time 180 -o /dev/null \
    -w '%{http_code} %{size_download} %{time_total}\n' "$bulk_url" >"$out" 2>&1 || true
  local code size secs
  read -r code size secs < <(tail -1 "$out") || true
  if [[ "$code" == 200 && "$size" == "$bulk_bytes" ]]; then
    awk -v b="$size" -v t="$secs" 'BEGIN { printf "%.1f\n", b / t / 1e6 }'
  else
    log "download failed: $(tr '\n' ' ' <"$out")"
    echo failed
  fi
}

bulk_check() {  # prints "ok" when a download's body has the file's SHA-256
  local sum
  sum="$(timeout 200 ip netns exec "$TG_NS_CLI" \
    curl --http1.1 -sS --cacert "$tmp/trust.pem" --max-time 180 "$bulk_url" 2>"$tmp/check-curl.err" |
    sha256sum | cut -d' ' -f1)" || true
  if [[ "$sum" == "$bulk_sha" ]]; then echo ok; else
    log "SHA-256 mismatch: got ${sum:-nothing} ($(tr '\n' ' ' <"$tmp/check-curl.err")), want $bulk_sha"
    echo MISMATCH
  fi
}

# CPU time (user + system, all threads, live and exited) of the given processes,
# in seconds; processes that are gone count 0.
proc_cpu_seconds() {  # pid...
  local p ticks total=0
  for p in "$@"; do
    # Fields after the command name (which may hold spaces): utime and stime are
    # the 12th and 13th.
    ticks="$(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12 + $13}')" || ticks=0
    total=$((total + ${ticks:-0}))
  done
  awk -v t="$total" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f\n", t / hz }'
}

# CPU time the whole machine spent busy, all CPUs, in seconds since boot, from
# /proc/stat's "cpu" line: user + nice + system + irq + softirq + steal (all
# but idle and iowait; guest time is already inside user). Every process,
# kernel thread and softirq counts, whoever it is charged to.
machine_cpu_seconds() {
  awk -v hz="$(getconf CLK_TCK)" '$1 == "cpu" { printf "%.2f\n", ($2 + $3 + $4 + $7 + $8 + $9) / hz; exit }' /proc/stat
}

# Resident memory (VmRSS) of the given processes, summed, in bytes.
proc_rss_bytes() {  # pid...
  local p kib total=0
  for p in "$@"; do
    kib="$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null)" || kib=0
    total=$((total + ${kib:-0}))
  done
  echo $((total * 1024))
}

# The processes of a namespace whose command name is NAME, one pid a line.
ns_pids_named() {  # namespace name
  local p
  for p in $(ip netns pids "$1" 2>/dev/null); do
    [[ "$(cat "/proc/$p/comm" 2>/dev/null)" == "$2" ]] && echo "$p"
  done
  return 0
}

# --- the inspection box as a bare bridge (bench-inspect.sh's (d), bench-starttls.sh's (c)) ---
# br0 in the box namespace joining boxo0 and boxi0 with the settings of
# `inspect-box.sh bridge` (STP off, forward delay 0, no multicast snooping or
# querier, no netfilter, IPv6 off, offloads off) but without any recorder.
box_bridge_up() {
  local ifc
  ip netns exec "$TG_NS_BOX" sysctl -qw net.ipv6.conf.default.disable_ipv6=1
  ip -n "$TG_NS_BOX" link add name br0 type bridge stp_state 0 forward_delay 0 \
     mcast_snooping 0 mcast_querier 0
  ip -n "$TG_NS_BOX" link set dev br0 type bridge \
     nf_call_iptables 0 nf_call_ip6tables 0 nf_call_arptables 0 2>/dev/null || true
  ip netns exec "$TG_NS_BOX" sysctl -qw net.ipv6.conf.br0.disable_ipv6=1
  tg_offloads_off "$TG_NS_BOX" br0
  ip -n "$TG_NS_BOX" link set dev br0 up
  for ifc in "$TG_BOXO_IF" "$TG_BOXI_IF"; do
    ip -n "$TG_NS_BOX" link set dev "$ifc" master br0
    ip -n "$TG_NS_BOX" link set dev "$ifc" up
  done
  for _ in $(seq 100); do
    bridge -n "$TG_NS_BOX" link show dev "$TG_BOXO_IF" | grep -q 'state forwarding' &&
      bridge -n "$TG_NS_BOX" link show dev "$TG_BOXI_IF" | grep -q 'state forwarding' && return 0
    sleep 0.05
  done
  log "box bridge ports did not reach the forwarding state"
  exit 1
}

box_bridge_down() {
  ip -n "$TG_NS_BOX" link del br0 2>/dev/null || true
}

# --- SSLsplit, transparent and inline (bench-compare.sh's path (b), bench-wan.sh) ---
# A Linux bridge br0 in the gw namespace joins gwc0 and gws0; with netfilter on
# it, an nftables rule redirects the client's connections to 198.18.0.2:443 to
# SSLsplit's local listener ($sp_port), which forges with the CA in $tmp/ca and
# the leaf key $tmp/leaf.key. The sourcing script sets $nft_table (the rules'
# table name) and keeps $sp_pid.
sp_port=8443        # SSLsplit's transparent listener
gw_v4=198.18.0.3    # br0's address: SSLsplit's upstream source
sp_pid=""

bridge_up() {  # nf_call_iptables 0|1
  ip -n "$TG_NS_GW" link add br0 type bridge stp_state 0 forward_delay 0
  ip -n "$TG_NS_GW" link set br0 type bridge nf_call_iptables "$1"
  ip -n "$TG_NS_GW" link set "$TG_GWC_IF" master br0
  ip -n "$TG_NS_GW" link set "$TG_GWS_IF" master br0
  ip -n "$TG_NS_GW" link set br0 up
}

# Path (b)'s redirection: the bridge with netfilter, br0's address, a clean
# connection-tracking table, and the nftables rules. Counters: the connections
# redirected (nat: SYNs that started a conntrack entry; then other packets that
# started one, i.e. stray segments of connections conntrack had already
# forgotten, picked up mid-stream and redirected too), and two checks that
# nothing passes SSLsplit by: the SYNs to the origin's port 443 that conntrack
# called invalid or matched to an existing entry (prerouting), and those the
# bridge forwarded instead (bridge forward).
redirect_up() {
  bridge_up 1
  ip -n "$TG_NS_GW" addr add "$gw_v4/$TG_V4_PREFIX" dev br0
  timeout 30 ip netns exec "$TG_NS_GW" conntrack -F >/dev/null 2>&1 || true
  timeout 30 ip netns exec "$TG_NS_GW" nft -f - <<EOF
table ip $nft_table {
  chain to_sslsplit {
    type nat hook prerouting priority dstnat; policy accept;
    ip daddr $TG_SRV_V4 tcp dport 443 tcp flags & (syn | ack) == syn counter redirect to :$sp_port
    ip daddr $TG_SRV_V4 tcp dport 443 counter redirect to :$sp_port
  }
  chain syn_state {
    type filter hook prerouting priority -150; policy accept;
    ip daddr $TG_SRV_V4 tcp dport 443 tcp flags & (syn | ack) == syn ct state invalid counter
    ip daddr $TG_SRV_V4 tcp dport 443 tcp flags & (syn | ack) == syn ct state established counter
  }
}
table bridge $nft_table {
  chain forward {
    type filter hook forward priority 0; policy accept;
    ip daddr $TG_SRV_V4 tcp dport 443 tcp flags & (syn | ack) == syn counter
  }
}
EOF
}

# The packet counts of the rules of a chain, in order, space-separated.
nft_counters() {  # family chain
  timeout 30 ip netns exec "$TG_NS_GW" nft list chain "$1" "$nft_table" "$2" |
    sed -n 's/.*counter packets \([0-9]*\) .*/\1/p' | tr '\n' ' '
}

start_sslsplit() {  # stderr-log connect-log trust-file
  ip netns exec "$TG_NS_GW" env SSL_CERT_FILE="$3" \
    sslsplit -o VerifyPeer=yes -c "$tmp/ca/ca.pem" -k "$tmp/ca/ca.key" -K "$tmp/leaf.key" \
    -l "$2" ssl 0.0.0.0 "$sp_port" >"$1" 2>&1 &
  sp_pid=$!
  for _ in $(seq 100); do
    ip netns exec "$TG_NS_GW" ss -Hltn "sport = :$sp_port" | grep -q . && return 0
    kill -0 "$sp_pid" 2>/dev/null || break
    sleep 0.1
  done
  log "sslsplit did not start:"; cat "$1" >&2; exit 1
}

sslsplit_pids() { ns_pids_named "$TG_NS_GW" sslsplit; }

# SIGTERM to SSLsplit's first process (it ends its privilege-separated child),
# SIGKILL to whatever of it is left after 30 s.
stop_sslsplit() {
  [[ -n "${sp_pid:-}" ]] || return 0
  local p
  kill -TERM "$sp_pid" 2>/dev/null || true
  for _ in $(seq 150); do [[ -z "$(sslsplit_pids)" ]] && break; sleep 0.2; done
  for p in $(sslsplit_pids); do
    log "sslsplit (pid $p) still running 30 s after SIGTERM: SIGKILL"
    kill -KILL "$p" 2>/dev/null || true
  done
  wait "$sp_pid" 2>/dev/null || true
  sp_pid=""
}

redirect_down() {
  ip netns exec "$TG_NS_GW" nft delete table ip "$nft_table" 2>/dev/null || true
  ip netns exec "$TG_NS_GW" nft delete table bridge "$nft_table" 2>/dev/null || true
  ip -n "$TG_NS_GW" link del br0 2>/dev/null || true
}

# tlsgate intercepting TLS on port 443 with the CA in $tmp/ca and the origin
# ($origin, tests/lab/origin.sh) as its only upstream trust.
tls_config() {  # base-config connection-log; prints the config
  tg_lab_config "$1"
  cat <<EOF

[intercept]
tcp_ports = [443]
mode = "tls"

[tls]
ca_cert = "$tmp/ca/ca.pem"
ca_key = "$tmp/ca/ca.key"
upstream_trust = "$origin/origin.crt"

[log]
connections = "$2"
EOF
}
