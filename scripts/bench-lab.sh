# scripts/bench-lab.sh — helpers shared by the lab benchmarks (bench-splice.sh,
# bench-tls.sh); sourced, not run. Expects log(), $root, $tmp and the lab
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
