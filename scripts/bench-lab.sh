# scripts/bench-lab.sh — helpers shared by the lab benchmarks (bench-splice.sh,
# bench-tls.sh, bench-inspect.sh); sourced, not run. Expects log(), $root, $tmp and the lab
# variables of lab-env.sh; uses $tg_pid (the tlsgate under test) and sets
# $watchdog_pid.
# shellcheck shell=bash
# The globals below ($root, $tmp, $tg_pid, $watchdog_pid) belong to the sourcing script.
# shellcheck disable=SC2034,SC2154

# Stops the tlsgate under test: SIGINT, then SIGKILL after 20 s.
stop_tlsgate() {
  [[ -n "$tg_pid" ]] || return 0
  kill -INT "$tg_pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$tg_pid" 2>/dev/null || break; sleep 0.2; done
  kill -KILL "$tg_pid" 2>/dev/null || true
  wait "$tg_pid" 2>/dev/null || true
  tg_pid=""
}

# Whether the client reaches the server (IPv4 ping, up to 5 s).
reachable() {
  for _ in $(seq 20); do
    ip netns exec "$TG_NS_CLI" ping -c1 -W1 -q "$TG_SRV_V4" >/dev/null 2>&1 && return 0
    sleep 0.25
  done
  return 1
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

# Starts the tlsgate under test in the gw namespace ($tg_pid) and waits up to
# 30 s for "tlsgate: running"; extra arguments go to `tlsgate run`.
start_tlsgate() {  # config log [run arguments...]
  local config="$1" tglog="$2"
  shift 2
  ip netns exec "$TG_NS_GW" "$tmp/tlsgate" run --config "$config" "$@" >"$tglog" 2>&1 &
  tg_pid=$!
  for _ in $(seq 150); do
    grep -q '^tlsgate: running' "$tglog" && break
    kill -0 "$tg_pid" 2>/dev/null || break
    sleep 0.2
  done
  grep -q '^tlsgate: running' "$tglog" || { log "tlsgate did not start:"; cat "$tglog" >&2; exit 1; }
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
