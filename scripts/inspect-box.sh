#!/usr/bin/env bash
# scripts/inspect-box.sh — the black box between tlsgate's inspection ports.
#
# tlsgate sends each intercepted connection's plaintext out of tg-gw/gwio0
# (inspect_out) and accepts it back on tg-gw/gwii0 (inspect_in). The box sits
# in namespace tg-box between boxo0 (peer of gwio0) and boxi0 (peer of gwii0),
# see scripts/lab-env.sh / lab-up.sh. This script runs one kind of box there;
# its state, pids, recordings and logs live in DIR (created if missing; its
# previous recordings/logs are removed on start).
#
# Usage (root; the lab must be up):
#   inspect-box.sh bridge DIR
#       Transparent box: Linux bridge br0 (STP off, forward delay 0, IPv6 off,
#       multicast snooping/querier off: it emits nothing) enslaving boxo0 and
#       boxi0, plus tcpflow recording the TCP payload of every flow crossing it:
#         DIR/flows/SRC.SPORT-DST.DPORT   one file per direction holding the
#             exact payload bytes in stream order (tcpflow's default tcpdemux
#             scanner only: no -a/-e post-processing), e.g.
#               198.018.000.001.40000-198.018.000.002.00443   (IPv4: 3-digit octets)
#               2001:2::1.40000-2001:2::2.00443               (IPv6: compressed)
#             ports are 5 digits; a 5-tuple seen again gets a suffix c1, c2...;
#             a VLAN-tagged flow gets --VID appended.
#         DIR/tcpflow.out, DIR/tcpflow.xml   tcpflow's messages / DFXML report
#                                            (the report is written at stop)
#         DIR/ngrep.log                      ngrep -t -W byline text log (if installed)
#       Flow bytes reach the files while tcpflow runs (within ~10 ms, even
#       for a connection still open); "stop" closes them.
#   inspect-box.sh block DIR MARKER [reset|drop] [--rewrite OLD=NEW]...
#       tests/lab/blockbox.py forwarding boxo0 <-> boxi0: a TCP segment whose
#       payload contains MARKER is dropped and its flow is reset (RST to both
#       ends, default) or silently dropped from then on. Decisions are logged
#       one per line to DIR/blockbox.log ("reset ...", "drop ...",
#       "drop-blocked ...", "rewrite ..."); its stdout/stderr go to
#       DIR/blockbox.out. An empty MARKER blocks nothing.
#   inspect-box.sh rewrite DIR OLD=NEW...
#       Same box with only --rewrite (same-length replacement in every TCP
#       payload, TCP checksum fixed): the box's modifications are authoritative.
#   inspect-box.sh stop DIR
#       Stop whatever box runs in tg-box (the pids in DIR, then any process
#       left in the namespace) and delete br0. The links stay as they are (up),
#       but nothing forwards any more: frames, SYNs included, vanish.
#   inspect-box.sh linkdown | linkup
#       Set boxo0 and boxi0 down/up: gwio0/gwii0 in tg-gw lose/regain carrier
#       (NO-CARRIER in `ip -n tg-gw link show gwio0`). Waits until they do.
#   inspect-box.sh status
#       Show the box namespace's links, bridge and processes.
#
# Every start first stops whatever box runs in the namespace (as "stop" does,
# whichever DIR it was started with), so switching boxes needs no stop. A start
# returns only once the box forwards (bridge ports forwarding with the
# recorder capturing; blockbox printed "ready" after binding both sockets).
# Names come from lab-env.sh (TG_NS_BOX, TG_BOXO_IF, TG_BOXI_IF, TG_NS_GW,
# TG_GWIO_IF, TG_GWII_IF), so tests/lab/inspect-box-selftest.sh can run it on
# throwaway namespaces. Env: TG_PYTHON (default /usr/bin/python3),
# TG_BOX_NGREP=0 to skip ngrep.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/lab-env.sh
. "$here/lab-env.sh"

BR=br0
BLOCKBOX="$(cd "$here/.." && pwd)/tests/lab/blockbox.py"
PY="${TG_PYTHON:-/usr/bin/python3}"
[[ -x "$PY" ]] || PY=python3

die() { echo "inspect-box.sh: $*" >&2; exit 1; }
usage() { sed -n '/^# Usage/,/^#   inspect-box.sh status/p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }
inbox() { ip netns exec "$TG_NS_BOX" "$@"; }

ns_exists() { ip netns list 2>/dev/null | awk '{print $1}' | grep -qx -- "$1"; }
need_lab() {
  [[ $(id -u) -eq 0 ]] || die "must run as root"
  ns_exists "$TG_NS_BOX" || die "namespace $TG_NS_BOX does not exist (run scripts/lab-up.sh)"
  local ifc
  for ifc in "$TG_BOXO_IF" "$TG_BOXI_IF"; do
    ip -n "$TG_NS_BOX" link show dev "$ifc" >/dev/null 2>&1 || die "$TG_NS_BOX has no interface $ifc"
  done
}

# wait_for SECONDS COMMAND...: poll every 50 ms until COMMAND succeeds.
wait_for() {
  local deadline=$((SECONDS + $1)); shift
  until "$@"; do
    ((SECONDS < deadline)) || return 1
    sleep 0.05
  done
}

# alive PID: running and not a zombie (an orphaned box is reaped by PID 1,
# which may take its time; a zombie has stopped all the same).
alive() {
  local stat
  { read -r stat <"/proc/$1/stat"; } 2>/dev/null || return 1
  stat="${stat##*) }"
  [[ "${stat%% *}" != Z ]]
}
all_gone() { local p; for p; do ! alive "$p" || return 1; done; }

# stop_pids PID...: SIGTERM to all at once (tcpflow then closes its files and
# writes its report), SIGKILL to whatever is left after 4 s.
stop_pids() {
  local p left=()
  (($#)) || return 0
  kill -TERM "$@" 2>/dev/null || true
  wait_for 4 all_gone "$@" || true
  for p in "$@"; do alive "$p" && left+=("$p"); done
  if ((${#left[@]})); then
    kill -KILL "${left[@]}" 2>/dev/null || true
    wait_for 1 all_gone "${left[@]}" || true
  fi
}

stop_box() {
  local dir="$1" f p pids=()
  for f in "$dir"/blockbox.pid "$dir"/tcpflow.pid "$dir"/ngrep.pid; do
    [[ -s "$f" ]] || continue
    p="$(cat "$f")"
    [[ "$p" =~ ^[0-9]+$ ]] && alive "$p" && pids+=("$p")
  done
  # The namespace holds nothing but a box: whatever else still runs there (a
  # box started with another DIR) is stopped as well.
  if ns_exists "$TG_NS_BOX"; then
    for p in $(ip netns pids "$TG_NS_BOX" 2>/dev/null); do
      [[ " ${pids[*]} " == *" $p "* ]] || pids+=("$p")
    done
  fi
  stop_pids "${pids[@]}"
  rm -f "$dir"/blockbox.pid "$dir"/tcpflow.pid "$dir"/ngrep.pid
  if ns_exists "$TG_NS_BOX" && ip -n "$TG_NS_BOX" link show dev "$BR" >/dev/null 2>&1; then
    ip -n "$TG_NS_BOX" link del dev "$BR"
  fi
}

# Safety net after stop_box: refuse to start next to anything that survived.
check_idle() {
  local pids
  pids="$(ip netns pids "$TG_NS_BOX" 2>/dev/null | tr '\n' ' ')"
  [[ -z "${pids// }" ]] || die "a box is already running in $TG_NS_BOX (pids $pids); stop it with 'inspect-box.sh stop ITS_DIR'"
  ! ip -n "$TG_NS_BOX" link show dev "$BR" >/dev/null 2>&1 || die "$BR already exists in $TG_NS_BOX"
}

prepare_dir() {
  local dir="$1"
  mkdir -p "$dir"
  stop_box "$dir"
  check_idle
  rm -rf "$dir/flows"
  rm -f "$dir"/{tcpflow.out,tcpflow.xml,ngrep.log,blockbox.log,blockbox.out}
}

# bg_start PIDFILE LOG COMMAND...: COMMAND in the box namespace, detached from
# our stdin/stdout/stderr (a caller capturing our output must not wait for
# it) and from our session (no signals from the caller's terminal).
bg_start() {
  local pidfile="$1" log="$2"; shift 2
  setsid ip netns exec "$TG_NS_BOX" "$@" </dev/null >"$log" 2>&1 &
  echo $! >"$pidfile"   # setsid and ip netns exec exec(), so this is COMMAND's pid
}

# started PIDFILE LOG PATTERN: wait until LOG matches PATTERN; fail if the
# process dies first.
started() {
  local pidfile="$1" log="$2" pattern="$3" pid
  pid="$(cat "$pidfile")"
  wait_for 10 eval "grep -q -- '$pattern' '$log' 2>/dev/null || ! alive $pid" || true
  if ! alive "$pid" || ! grep -q -- "$pattern" "$log" 2>/dev/null; then
    echo "inspect-box.sh: $(basename "$pidfile" .pid) did not start:" >&2
    cat "$log" >&2 2>/dev/null || true
    return 1
  fi
}

port_forwarding() { bridge -n "$TG_NS_BOX" link show dev "$1" 2>/dev/null | grep -q 'state forwarding'; }

start_bridge() {
  local dir="$1" ifc
  prepare_dir "$dir"
  mkdir -p "$dir/flows"
  # No IPv6 on anything created in the namespace (lab-up.sh set the default);
  # no STP, no multicast snooping/querier: the bridge never emits a frame.
  inbox sysctl -qw net.ipv6.conf.default.disable_ipv6=1
  ip -n "$TG_NS_BOX" link add name "$BR" type bridge stp_state 0 forward_delay 0 \
     mcast_snooping 0 mcast_querier 0
  # Bridged frames must not go through (br_)netfilter, if that module is loaded.
  ip -n "$TG_NS_BOX" link set dev "$BR" type bridge \
     nf_call_iptables 0 nf_call_ip6tables 0 nf_call_arptables 0 2>/dev/null || true
  inbox sysctl -qw "net.ipv6.conf.$BR.disable_ipv6=1"
  tg_offloads_off "$TG_NS_BOX" "$BR"
  ip -n "$TG_NS_BOX" link set dev "$BR" up

  # Recorders first, so nothing crosses the bridge unrecorded. tcpflow without
  # -a/-e: only the tcpdemux scanner, i.e. the raw payload of each direction.
  bg_start "$dir/tcpflow.pid" "$dir/tcpflow.out" \
    tcpflow -i "$BR" -o "$dir/flows" -X "$dir/tcpflow.xml" tcp
  started "$dir/tcpflow.pid" "$dir/tcpflow.out" "listening on" || { stop_box "$dir"; exit 1; }
  if [[ "${TG_BOX_NGREP:-1}" != 0 ]] && command -v ngrep >/dev/null; then
    bg_start "$dir/ngrep.pid" "$dir/ngrep.log" ngrep -d "$BR" -q -l -t -W byline '' tcp
    started "$dir/ngrep.pid" "$dir/ngrep.log" "interface: $BR" || { stop_box "$dir"; exit 1; }
  fi

  for ifc in "$TG_BOXO_IF" "$TG_BOXI_IF"; do
    inbox sysctl -qw "net.ipv6.conf.$ifc.disable_ipv6=1"
    ip -n "$TG_NS_BOX" link set dev "$ifc" master "$BR"
    ip -n "$TG_NS_BOX" link set dev "$ifc" up
  done
  # With the links down (linkdown) the ports stay "disabled": don't wait then.
  if ip -n "$TG_NS_BOX" link show dev "$TG_BOXO_IF" | grep -q 'state UP' &&
     ip -n "$TG_NS_BOX" link show dev "$TG_BOXI_IF" | grep -q 'state UP'; then
    wait_for 5 eval "port_forwarding $TG_BOXO_IF && port_forwarding $TG_BOXI_IF" ||
      { stop_box "$dir"; die "bridge ports did not reach the forwarding state"; }
  fi
  local ngrep_note=""
  [[ -f "$dir/ngrep.pid" ]] && ngrep_note=", ngrep log $dir/ngrep.log"
  echo "inspect-box.sh: bridge $TG_NS_BOX/$BR ($TG_BOXO_IF <-> $TG_BOXI_IF) forwarding;" \
       "flows recorded in $dir/flows/ (one file per direction: SRCIP.SPORT-DSTIP.DPORT)," \
       "tcpflow messages $dir/tcpflow.out$ngrep_note"
}

start_blockbox() {
  local dir="$1"; shift
  prepare_dir "$dir"
  [[ -r "$BLOCKBOX" ]] || die "missing $BLOCKBOX"
  bg_start "$dir/blockbox.pid" "$dir/blockbox.out" \
    "$PY" -u "$BLOCKBOX" --log "$dir/blockbox.log" "$@" "$TG_BOXO_IF" "$TG_BOXI_IF"
  started "$dir/blockbox.pid" "$dir/blockbox.out" "^ready" || { stop_box "$dir"; exit 1; }
  echo "inspect-box.sh: blockbox $TG_NS_BOX ($TG_BOXO_IF <-> $TG_BOXI_IF) forwarding ($*);" \
       "decisions logged to $dir/blockbox.log, output in $dir/blockbox.out"
}

# carrier_is on|off: the gw-side peers (those that exist in TG_NS_GW) agree.
carrier_is() {
  local want="$1" ifc line
  for ifc in "$TG_GWIO_IF" "$TG_GWII_IF"; do
    line="$(ip -n "$TG_NS_GW" -o link show dev "$ifc" 2>/dev/null)" || continue
    if [[ "$want" == off ]]; then [[ "$line" == *NO-CARRIER* ]] || return 1
    else [[ "$line" != *NO-CARRIER* && "$line" == *LOWER_UP* ]] || return 1
    fi
  done
}

set_links() {
  local state="$1" want ifc
  for ifc in "$TG_BOXO_IF" "$TG_BOXI_IF"; do ip -n "$TG_NS_BOX" link set dev "$ifc" "$state"; done
  [[ "$state" == down ]] && want=off || want=on
  if ns_exists "$TG_NS_GW"; then
    wait_for 5 carrier_is "$want" || die "carrier of $TG_NS_GW/$TG_GWIO_IF,$TG_GWII_IF did not turn $want"
    for ifc in "$TG_GWIO_IF" "$TG_GWII_IF"; do
      ip -n "$TG_NS_GW" -br link show dev "$ifc" 2>/dev/null | sed "s/^/inspect-box.sh: $TG_NS_GW: /" || true
    done
  fi
  echo "inspect-box.sh: $TG_NS_BOX/$TG_BOXO_IF,$TG_BOXI_IF $state (gw-side carrier $want)"
}

action="${1:-}"
case "$action" in
bridge)
  [[ $# -eq 2 ]] || usage
  need_lab; start_bridge "$2" ;;
block)
  [[ $# -ge 3 ]] || usage
  need_lab
  dir="$2" marker="$3"; shift 3
  mode=reset
  if [[ $# -gt 0 && "$1" != --* ]]; then mode="$1"; shift; fi
  [[ "$mode" == reset || "$mode" == drop ]] || die "block: mode must be reset or drop, not '$mode'"
  extra=()
  while [[ $# -gt 0 ]]; do
    [[ "$1" == --rewrite && $# -ge 2 ]] || die "block: unexpected argument '$1' (only --rewrite OLD=NEW)"
    extra+=(--rewrite "$2"); shift 2
  done
  start_blockbox "$dir" --marker "$marker" --action "$mode" "${extra[@]}" ;;
rewrite)
  [[ $# -ge 3 ]] || usage
  need_lab
  dir="$2"; shift 2
  extra=()
  for r in "$@"; do extra+=(--rewrite "$r"); done
  start_blockbox "$dir" "${extra[@]}" ;;
stop)
  [[ $# -eq 2 ]] || usage
  stop_box "$2"
  echo "inspect-box.sh: box stopped; $TG_NS_BOX forwards nothing" ;;
linkdown) need_lab; set_links down ;;
linkup) need_lab; set_links up ;;
status)
  need_lab
  ip -n "$TG_NS_BOX" -br link show
  bridge -n "$TG_NS_BOX" link show 2>/dev/null || true
  pids="$(ip netns pids "$TG_NS_BOX" | paste -sd, -)"
  if [[ -n "$pids" ]]; then ps -o pid=,args= -p "$pids"
  else echo "no box process running"; fi ;;
*) usage ;;
esac
