#!/usr/bin/env bash
# tests/lab/inspect-box-selftest.sh — self-test of scripts/inspect-box.sh and
# tests/lab/blockbox.py without tlsgate: two kernel TCP hosts talk through the
# box, which runs in throwaway namespaces (never the real lab's tg-box).
#
# Usage: tests/lab/inspect-box-selftest.sh   (root; ~30 s; exit 0 = all passed)
#
#   tg-bt-a: bta0 (02:00:00:00:09:01, 198.18.9.1/24, 2001:2:9::1/64)
#              | veth                       (plays tg-gw/gwio0)
#   tg-bt-box: btbo0 ==[ inspect-box.sh ]== btbi0
#              | veth                       (plays tg-gw/gwii0)
#   tg-bt-b: btb0 (02:00:00:00:09:02, 198.18.9.2/24, 2001:2:9::2/64), TCP server :8080
#
# Checks: bridge mode passes transfers and tcpflow recorded the exact request
# and response bytes; block/reset resets a marked request promptly (also when
# the marker straddles two segments, also over IPv6) while normal requests
# pass, forwards malformed frames unchanged and answers VLAN-tagged marked
# segments with correct RSTs; block/drop stalls a marked connection and logs
# it; rewrite changes bytes in both directions; linkdown removes the carrier
# and linkup restores forwarding; stop makes SYNs vanish. The box never emits
# a frame of its own (everything seen by the hosts has a host's source MAC).
# Neighbours are static, so no ARP/ND is needed.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
BOX="$repo/scripts/inspect-box.sh"
PEER="$here/inspect-box-peer.py"
PY="${TG_PYTHON:-/usr/bin/python3}"
[[ -x "$PY" ]] || PY=python3

NS_A=tg-bt-a NS_B=tg-bt-b
IF_A=bta0 IF_B=btb0
MAC_A=02:00:00:00:09:01 MAC_B=02:00:00:00:09:02
V4_A=198.18.9.1 V4_B=198.18.9.2 V6_A=2001:2:9::1 V6_B=2001:2:9::2
PORT=8080
# inspect-box.sh (and lab-env.sh) read these: the box in its own namespace.
export TG_NS_BOX=tg-bt-box TG_BOXO_IF=btbo0 TG_BOXI_IF=btbi0
export TG_NS_GW=$NS_A TG_GWIO_IF=$IF_A TG_GWII_IF=$IF_B   # gwii's peer lives in NS_B here
# shellcheck source=scripts/lab-env.sh
. "$repo/scripts/lab-env.sh"

[[ $(id -u) -eq 0 ]] || { echo "inspect-box-selftest.sh: must run as root" >&2; exit 1; }

tmp="$(mktemp -d /tmp/inspect-box-selftest.XXXXXX)"
box="$tmp/box"
pids=()
failures=0
t_start=$SECONDS

nses_down() {
  local ns p
  for ns in "$NS_A" "$NS_B" "$TG_NS_BOX"; do
    if ip netns list | awk '{print $1}' | grep -qx -- "$ns"; then
      for p in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$p" 2>/dev/null || true; done
      ip netns del "$ns"
    fi
  done
}
cleanup() {
  local rc=$?
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  "$BOX" stop "$box" >/dev/null 2>&1 || true
  nses_down
  if ((rc != 0)); then echo "inspect-box-selftest.sh: keeping $tmp for inspection" >&2
  else rm -rf "$tmp"; fi
}
trap cleanup EXIT

pass() { echo "  ok   $*"; }
fail() { echo "  FAIL $*"; failures=$((failures + 1)); }
check() { local what="$1"; shift; if "$@"; then pass "$what"; else fail "$what"; fi; }
section() { echo "== $* ($((SECONDS - t_start)) s)"; }
in_a() { ip netns exec "$NS_A" "$@"; }
in_b() { ip netns exec "$NS_B" "$@"; }

# --- topology ---------------------------------------------------------------
nses_down
for ns in "$NS_A" "$NS_B" "$TG_NS_BOX"; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
ip netns exec "$TG_NS_BOX" sysctl -qw net.ipv6.conf.all.disable_ipv6=1
ip netns exec "$TG_NS_BOX" sysctl -qw net.ipv6.conf.default.disable_ipv6=1
ip netns exec "$TG_NS_BOX" sysctl -qw net.ipv4.ip_forward=0
for ns in "$NS_A" "$NS_B"; do
  for c in all default; do
    for k in accept_dad=0 dad_transmits=0 router_solicitations=0 accept_ra=0; do
      ip netns exec "$ns" sysctl -qw "net.ipv6.conf.$c.$k"
    done
  done
done
ip link add "$IF_A" netns "$NS_A" address "$MAC_A" type veth peer name "$TG_BOXO_IF" netns "$TG_NS_BOX"
ip link add "$IF_B" netns "$NS_B" address "$MAC_B" type veth peer name "$TG_BOXI_IF" netns "$TG_NS_BOX"
for ifc in "$TG_BOXO_IF" "$TG_BOXI_IF"; do
  tg_offloads_off "$TG_NS_BOX" "$ifc"
  ip -n "$TG_NS_BOX" link set dev "$ifc" up
done
tg_offloads_off "$NS_A" "$IF_A"
tg_offloads_off "$NS_B" "$IF_B"
ip -n "$NS_A" addr add "$V4_A/24" dev "$IF_A"
ip -n "$NS_A" addr add "$V6_A/64" dev "$IF_A" nodad
ip -n "$NS_B" addr add "$V4_B/24" dev "$IF_B"
ip -n "$NS_B" addr add "$V6_B/64" dev "$IF_B" nodad
ip -n "$NS_A" link set dev "$IF_A" up
ip -n "$NS_B" link set dev "$IF_B" up
ip -n "$NS_A" neigh replace "$V4_B" lladdr "$MAC_B" dev "$IF_A" nud permanent
ip -n "$NS_A" neigh replace "$V6_B" lladdr "$MAC_B" dev "$IF_A" nud permanent
ip -n "$NS_B" neigh replace "$V4_A" lladdr "$MAC_A" dev "$IF_B" nud permanent
ip -n "$NS_B" neigh replace "$V6_A" lladdr "$MAC_A" dev "$IF_B" nud permanent

# Everything either host receives, for the "box emits nothing" check.
for side in A B; do
  if [[ $side == A ]]; then ns=$NS_A ifc=$IF_A; else ns=$NS_B ifc=$IF_B; fi
  ip netns exec "$ns" tcpdump -i "$ifc" -Q in -n -U -w "$tmp/all-$side.pcap" >"$tmp/tcpdump-$side.out" 2>&1 &
  pids+=($!)
done
in_b "$PY" -u "$PEER" serve "$PORT" "$tmp/server.log" >"$tmp/server.out" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  grep -q listening "$tmp/server.out" 2>/dev/null &&
    grep -q listening "$tmp/tcpdump-A.out" 2>/dev/null && grep -q listening "$tmp/tcpdump-B.out" 2>/dev/null && break
  sleep 0.05
done
grep -q listening "$tmp/server.out" || { echo "server did not start: $(cat "$tmp/server.out")" >&2; exit 1; }

# Requests: a normal one (~3 KB, several segments), a marked one (marker in
# its last segment), and one with text the rewrite test replaces.
pad="$(printf 'abcdefghijklmnopqrstuvwxyz0123456789%.0s' $(seq 80))"
printf 'GET /normal HTTP/1.0\r\nHost: box\r\nX-Pad: %s\r\n\r\n' "$pad" >"$tmp/normal.req"
printf 'GET /evil HTTP/1.0\r\nHost: box\r\nX-Pad: %s\r\nX-Evil: EVIL-MARKER\r\n\r\n' "$pad" >"$tmp/evil.req"
printf 'GET /hello-box HTTP/1.0\r\nHost: box\r\n\r\n' >"$tmp/hello.req"
split_at=$(($(grep -bo 'EVIL-MARKER' "$tmp/evil.req" | cut -d: -f1) + 5))   # between "EVIL-" and "MARKER"

# req NAME HOST REQUEST TIMEOUT [SPLIT] -> sets $rc and $res ("ok|reset|timeout|error SECONDS")
req() {
  local name="$1" host="$2" request="$3" timeout="$4"; shift 4
  rc=0
  res="$(in_a "$PY" "$PEER" request "$host" "$PORT" "$request" "$tmp/$name.resp" "$timeout" "$@")" || rc=$?
}
expect_ok() {  # NAME HOST REQUEST: the transfer works and the answer is byte-exact
  req "$1" "$2" "$3" 5
  "$PY" "$PEER" expect "$3" "$tmp/$1.expected"
  check "$1: transfer via $2 succeeds and is byte-exact ($res)" \
    eval "[[ $rc == 0 ]] && cmp -s '$tmp/$1.resp' '$tmp/$1.expected'"
}
# flows_have FILE: some DIR/flows/* file holds exactly FILE's bytes (waits ≤ 3 s)
flows_have() {
  local want="$1" f
  for _ in $(seq 60); do
    for f in "$box"/flows/*; do [[ -f "$f" ]] && cmp -s "$f" "$want" && return 0; done
    sleep 0.05
  done
  return 1
}
rx_packets() { ip -n "$1" -s -j link show dev "$2" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)[0]["stats64"]["rx"]["packets"])'; }
tx_packets() { ip -n "$1" -s -j link show dev "$2" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)[0]["stats64"]["tx"]["packets"])'; }
server_saw() { grep -q "^$1 .*$2" "$tmp/server.log"; }

# --- bridge -------------------------------------------------------------------
section "bridge + tcpflow"
"$BOX" bridge "$box"
expect_ok bridge-v4 "$V4_B" "$tmp/normal.req"
expect_ok bridge-v6 "$V6_B" "$tmp/normal.req"
check "tcpflow recorded the exact request bytes" flows_have "$tmp/normal.req"
check "tcpflow recorded the exact response bytes" flows_have "$tmp/bridge-v4.expected"
check "tcpflow file names: SRC.SPORT-DST.DPORT (IPv4 zero-padded)" \
  eval "ls '$box/flows' | grep -Eq '^198\.018\.009\.001\.[0-9]{5}-198\.018\.009\.002\.08080$'"
check "tcpflow recorded the IPv6 flows too" eval "ls '$box/flows' | grep -q '^2001:2:9::1\.[0-9]*-2001:2:9::2\.08080$'"
# A connection that stays open: tcpflow must not hold its bytes back.
printf 'PARTIAL-%s' "$(printf 'x%.0s' $(seq 100))" >"$tmp/partial.req"
in_a "$PY" -c 'import socket, sys, time
c = socket.create_connection((sys.argv[1], int(sys.argv[2])))
c.sendall(open(sys.argv[3], "rb").read())
time.sleep(5)' "$V4_B" "$PORT" "$tmp/partial.req" &
partial=$!
check "tcpflow wrote a still-open connection's bytes at once" flows_have "$tmp/partial.req"
kill "$partial" 2>/dev/null || true
check "ngrep logged the request" grep -q 'GET /normal' "$box/ngrep.log"
check "bridge br0 has IPv6 off and no address" \
  eval "[[ \$(ip netns exec $TG_NS_BOX sysctl -n net.ipv6.conf.br0.disable_ipv6) == 1 ]] && ! ip -n $TG_NS_BOX addr show dev br0 | grep -q inet"
find "$box/flows" -type f -printf '       %10s  %f\n' | sort -k2

# --- block: reset ---------------------------------------------------------------
section "block EVIL-MARKER reset"
"$BOX" block "$box" EVIL-MARKER reset
check "bridge removed when the blockbox starts" eval "! ip -n $TG_NS_BOX link show br0 >/dev/null 2>&1"
expect_ok reset-normal-v4 "$V4_B" "$tmp/normal.req"
expect_ok reset-normal-v6 "$V6_B" "$tmp/normal.req"
req reset-evil-v4 "$V4_B" "$tmp/evil.req" 5
check "marked request over IPv4 is reset promptly ($res)" eval "[[ $rc == 2 ]] && awk '{exit !(\$2 < 2)}' <<<'$res'"
req reset-evil-v6 "$V6_B" "$tmp/evil.req" 5
check "marked request over IPv6 is reset promptly ($res)" eval "[[ $rc == 2 ]] && awk '{exit !(\$2 < 2)}' <<<'$res'"
req reset-split "$V4_B" "$tmp/evil.req" 5 "$split_at"
check "marker straddling two segments is reset too ($res)" eval "[[ $rc == 2 ]] && awk '{exit !(\$2 < 2)}' <<<'$res'"
sleep 0.2
check "the server's end was reset as well (3 connections)" eval "[[ \$(grep -c '^reset ' '$tmp/server.log') -ge 3 ]]"
check "log has a reset line for the IPv4 flow" grep -q "reset tcp4 $V4_A:[0-9]* > $V4_B:$PORT .*RST to receiver.*RST to sender" "$box/blockbox.log"
check "log has a reset line for the IPv6 flow" grep -q "reset tcp6 \[$V6_A\]:[0-9]* > \[$V6_B\]:$PORT" "$box/blockbox.log"
expect_ok reset-after "$V4_B" "$tmp/normal.req"

# Malformed frames and VLAN-tagged marked segments, injected from A's side.
for side in A B; do
  if [[ $side == A ]]; then ns=$NS_A ifc=$IF_A; else ns=$NS_B ifc=$IF_B; fi
  ip netns exec "$ns" "$PY" -u "$PEER" sniff "$ifc" 1.5 "$tmp/sniff-$side.hex" >"$tmp/sniff-$side.out" 2>&1 &
  pids+=($!)
  eval "sniff_$side=$!"
done
for _ in $(seq 100); do
  grep -q ready "$tmp/sniff-A.out" 2>/dev/null && grep -q ready "$tmp/sniff-B.out" 2>/dev/null && break
  sleep 0.05
done
in_a "$PY" "$PEER" inject "$IF_A" "$MAC_A" "$MAC_B" "$tmp/injected.txt"
# shellcheck disable=SC2154
wait "$sniff_A" "$sniff_B" || true
check "malformed frames forwarded unchanged; tagged marked segments answered with correct RSTs" \
  "$PY" "$PEER" check-inject "$tmp/injected.txt" "$tmp/sniff-A.hex" "$tmp/sniff-B.hex"
check "blockbox survived every frame" eval "kill -0 \$(cat '$box/blockbox.pid') && ! grep -q '^.* error ' '$box/blockbox.log'"
expect_ok reset-still-works "$V4_B" "$tmp/normal.req"

# --- block: drop -----------------------------------------------------------------
section "block EVIL-MARKER drop"
"$BOX" block "$box" EVIL-MARKER drop
( req drop-evil "$V4_B" "$tmp/evil.req" 2; echo "$res" >"$tmp/drop-evil.res"; exit "$rc" ) &
drop_job=$!
expect_ok drop-normal "$V4_B" "$tmp/normal.req"
rc=0; wait "$drop_job" || rc=$?
check "marked connection stalls until the client times out ($(cat "$tmp/drop-evil.res"))" eval "[[ $rc == 3 ]]"
check "log shows the drop" grep -q "drop tcp4 $V4_A:[0-9]* > $V4_B:$PORT .*marker found: segment and flow dropped" "$box/blockbox.log"
check "log shows later segments (retransmissions) dropped" grep -q "drop-blocked tcp4 $V4_A" "$box/blockbox.log"

# --- rewrite ---------------------------------------------------------------------
section "rewrite hello=HOWDY origin=ORIGIN"
"$BOX" rewrite "$box" hello=HOWDY origin=ORIGIN
for fam in v4 v6; do
  host=$V4_B; [[ $fam == v6 ]] && host=$V6_B
  req "rewrite-$fam" "$host" "$tmp/hello.req" 5
  sed 's/hello/HOWDY/' "$tmp/hello.req" >"$tmp/hello-rewritten.req"
  "$PY" "$PEER" expect "$tmp/hello-rewritten.req" "$tmp/rewrite.tmp"
  "$PY" -c 'import sys; d=open(sys.argv[1],"rb").read(); open(sys.argv[2],"wb").write(d.replace(b"origin", b"ORIGIN"))' \
    "$tmp/rewrite.tmp" "$tmp/rewrite-$fam.expected"
  check "rewrite over $fam: server got HOWDY, client got ORIGIN, rest byte-exact ($res)" \
    eval "[[ $rc == 0 ]] && cmp -s '$tmp/rewrite-$fam.resp' '$tmp/rewrite-$fam.expected'"
done
check "log has rewrite lines" grep -q "rewrite tcp4 .* payload rewritten" "$box/blockbox.log"

# --- linkdown / linkup -------------------------------------------------------------
section "linkdown / linkup (blockbox running)"
"$BOX" block "$box" EVIL-MARKER reset
"$BOX" linkdown
check "host A sees NO-CARRIER" eval "ip -n $NS_A link show $IF_A | grep -q NO-CARRIER"
check "host B sees NO-CARRIER" eval "ip -n $NS_B link show $IF_B | grep -q NO-CARRIER"
req linkdown "$V4_B" "$tmp/normal.req" 1
check "no transfer while the links are down ($res)" eval "[[ $rc != 0 ]]"
"$BOX" linkup
check "carrier back on both hosts" \
  eval "! ip -n $NS_A link show $IF_A | grep -q NO-CARRIER && ! ip -n $NS_B link show $IF_B | grep -q NO-CARRIER"
expect_ok linkup "$V4_B" "$tmp/normal.req"
check "blockbox noted the link going down and kept running" \
  eval "grep -q 'link $TG_BOXO_IF: .*Network is down\|link $TG_BOXI_IF: .*Network is down' '$box/blockbox.log' && kill -0 \$(cat '$box/blockbox.pid')"

# --- stop ----------------------------------------------------------------------------
section "stop"
"$BOX" stop "$box"
check "no process left in $TG_NS_BOX" eval "[[ -z \$(ip netns pids $TG_NS_BOX) ]]"
check "box links still up" eval "ip -n $TG_NS_BOX -br link show $TG_BOXO_IF | grep -q UP && ip -n $TG_NS_BOX -br link show $TG_BOXI_IF | grep -q UP"
b_rx=$(rx_packets "$NS_B" "$IF_B"); a_tx=$(tx_packets "$NS_A" "$IF_A")
req stopped "$V4_B" "$tmp/normal.req" 1.5
check "connection fails while stopped ($res)" eval "[[ $rc == 3 ]]"
check "SYNs left A but nothing reached B" \
  eval "[[ \$(tx_packets $NS_A $IF_A) -gt $a_tx && \$(rx_packets $NS_B $IF_B) == $b_rx ]]"
"$BOX" bridge "$box" >/dev/null
expect_ok restart-bridge "$V4_B" "$tmp/normal.req"
"$BOX" stop "$box" >/dev/null
check "bridge removed by stop" eval "! ip -n $TG_NS_BOX link show br0 >/dev/null 2>&1"

# --- the box itself never transmitted a frame ---------------------------------------
section "box silence"
for p in "${pids[@]:0:2}"; do kill -INT "$p" 2>/dev/null || true; done
sleep 0.3
for side in A B; do
  n=$(tcpdump -r "$tmp/all-$side.pcap" -n -e "not ether src $MAC_A and not ether src $MAC_B" 2>/dev/null | wc -l)
  total=$(tcpdump -r "$tmp/all-$side.pcap" -n 2>/dev/null | wc -l)
  check "host $side received $total frames, none with a foreign source MAC ($n)" eval "[[ $n == 0 && $total -gt 0 ]]"
done

echo "== $((SECONDS - t_start)) s"
if ((failures)); then
  echo "inspect-box-selftest.sh: $failures check(s) FAILED" >&2
  exit 1
fi
echo "inspect-box-selftest.sh: all checks passed"
