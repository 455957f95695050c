#!/usr/bin/env bash
# scripts/lab-impair.sh — put the impairment element (tlsgate-impair: delay,
# jitter, loss, bursts, reorder, duplicate, corrupt, rate; this kernel has no
# netem) on one link of the namespace lab.
#
# Usage (root, after scripts/lab-up.sh and BEFORE tlsgate starts on that link,
# since af_packet binds the interfaces at start):
#   scripts/lab-impair.sh LINK [A_TO_B [B_TO_A]]
#   scripts/lab-impair.sh stop [LINK]
# LINK (A side first):
#   client       tg-cli/cli0   <-> tg-gw/gwc0     (A = client,    B = appliance)
#   server       tg-gw/gws0    <-> tg-srv/srv0    (A = appliance, B = server)
#   inspect-out  tg-gw/gwio0   <-> tg-box/boxo0   (A = appliance, B = box)
#   inspect-in   tg-gw/gwii0   <-> tg-box/boxi0   (A = appliance, B = box)
# A_TO_B, B_TO_A: netem's words, e.g. "delay 25ms 2ms loss 1% reorder 10%
# duplicate 1% corrupt 0.5% rate 1gbit" ("loss gemodel 1% 20%" for bursts);
# empty: that way unimpaired. The link's veth pair is replaced by two pairs
# through the namespace tg-imp-LINK ($TG_NS_IMP-LINK), where tlsgate-impair bridges them on
# DPDK af_packet; the endpoints keep their names, MACs and the lab's own
# addresses (others, such as tests/lab/terminate-peers.sh's, are lost: add
# them after this).
# Env: TG_IMPAIR_BIN (default target/debug/tlsgate-impair), TG_IMPAIR_SEED (1).
# The element's log and final counters (JSON) go to /tmp/tlsgate-impair-LINK.{log,json}
# (/tmp/tlsgate-$TG_NS_IMP-LINK.{log,json} with another TG_NS_IMP);
# `stop` ends it with SIGTERM so the counters are written. lab-down.sh removes it all.
set -euo pipefail
here="$(dirname "${BASH_SOURCE[0]}")"
# shellcheck source=scripts/lab-env.sh
. "$here/lab-env.sh"
[[ $(id -u) -eq 0 ]] || { echo "lab-impair.sh: must run as root" >&2; exit 1; }

die() { echo "lab-impair.sh: $*" >&2; exit 1; }
LINKS=(client server inspect-out inspect-in)

stop_link() {
  local ns="$TG_NS_IMP-$1" pids
  [[ -e "/run/netns/$ns" ]] || return 0
  pids="$(ip netns pids "$ns" 2>/dev/null || true)"
  if [[ -n "$pids" ]]; then
    # shellcheck disable=SC2086
    kill -TERM $pids 2>/dev/null || true
    for _ in $(seq 50); do
      # shellcheck disable=SC2086
      kill -0 $pids 2>/dev/null || break
      sleep 0.1
    done
  fi
}

if [[ "${1:-}" == stop ]]; then
  if [[ -n "${2:-}" ]]; then stop_link "$2"; else for l in "${LINKS[@]}"; do stop_link "$l"; done; fi
  exit 0
fi

link="${1:-}"; a_to_b="${2:-}"; b_to_a="${3:-}"
# Each end: namespace, interface, and its kind (endpoint addresses to restore,
# or an appliance/box port).
case "$link" in
  client)      ends=("$TG_NS_CLI" "$TG_CLI_IF" cli  "$TG_NS_GW" "$TG_GWC_IF" gw) ;;
  server)      ends=("$TG_NS_GW" "$TG_GWS_IF" gw    "$TG_NS_SRV" "$TG_SRV_IF" srv) ;;
  inspect-out) ends=("$TG_NS_GW" "$TG_GWIO_IF" gw   "$TG_NS_BOX" "$TG_BOXO_IF" box) ;;
  inspect-in)  ends=("$TG_NS_GW" "$TG_GWII_IF" gw   "$TG_NS_BOX" "$TG_BOXI_IF" box) ;;
  *) die "unknown link ${link:-(none)}: give one of ${LINKS[*]}, or stop" ;;
esac
bin="${TG_IMPAIR_BIN:-target/debug/tlsgate-impair}"
[[ -x "$bin" ]] || die "$bin is missing: cargo build -p tlsgate --bin tlsgate-impair"
ns="$TG_NS_IMP-$link"
[[ -e "/run/netns/${ends[0]}" && -e "/run/netns/${ends[3]}" ]] || die "the lab is not up (scripts/lab-up.sh)"
[[ -e "/run/netns/$ns" ]] && die "$link is already impaired (scripts/lab-impair.sh stop $link, or lab-up.sh)"

# The element's own namespace: no addresses, IPv6 off, so its kernel sends nothing.
ip netns add "$ns"
ip -n "$ns" link set lo up
ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1
ip netns exec "$ns" sysctl -qw net.ipv6.conf.default.disable_ipv6=1

# Replace the link's veth pair (deleting one end deletes both).
ip -n "${ends[0]}" link del "${ends[1]}"
side_if=(impa0 impb0)
for i in 0 1; do
  end_ns="${ends[$((i * 3))]}" end_if="${ends[$((i * 3 + 1))]}" kind="${ends[$((i * 3 + 2))]}"
  mac=()
  [[ $kind == cli ]] && mac=(address "$TG_CLI_MAC")
  [[ $kind == srv ]] && mac=(address "$TG_SRV_MAC")
  ip link add "$end_if" netns "$end_ns" mtu "$TG_MTU" "${mac[@]}" type veth \
     peer name "${side_if[$i]}" netns "$ns" mtu "$TG_MTU"
  tg_offloads_off "$ns" "${side_if[$i]}"
  ip -n "$ns" link set dev "${side_if[$i]}" promisc on up
  tg_offloads_off "$end_ns" "$end_if"
  case "$kind" in
    cli|srv)
      v4=$TG_CLI_V4 v6=$TG_CLI_V6
      [[ $kind == srv ]] && v4=$TG_SRV_V4 v6=$TG_SRV_V6
      ip -n "$end_ns" addr add "$v4/$TG_V4_PREFIX" dev "$end_if"
      ip -n "$end_ns" addr add "$v6/$TG_V6_PREFIX" dev "$end_if" nodad
      ip -n "$end_ns" link set dev "$end_if" up ;;
    gw)
      ip netns exec "$end_ns" sysctl -qw "net.ipv6.conf.$end_if.disable_ipv6=1"
      ip -n "$end_ns" link set dev "$end_if" promisc on up ;;
    box)
      ip netns exec "$end_ns" sysctl -qw "net.ipv6.conf.$end_if.disable_ipv6=1"
      ip -n "$end_ns" link set dev "$end_if" up ;;
  esac
done

files="/tmp/tlsgate-impair-$link"
[[ "$TG_NS_IMP" == tg-imp ]] || files="/tmp/tlsgate-$ns"
log="$files.log" json="$files.json"
rm -f "$json"
ring="qpairs=1,framesz=2048,blocksz=4096,framecnt=4096"
ip netns exec "$ns" "$bin" \
  --a "net_af_packet0,iface=impa0,$ring" --b "net_af_packet1,iface=impb0,$ring" \
  --a-to-b "$a_to_b" --b-to-a "$b_to_a" --seed "${TG_IMPAIR_SEED:-1}" \
  --eal-args "--no-huge -m 512 --no-shconf --no-pci -l 0 --log-level=*:warning" \
  --stats-json "$json" >"$log" 2>&1 &
pid=$!
# Ready when it says so (or dead: show why).
for _ in $(seq 100); do
  grep -q 'tlsgate-impair: running' "$log" 2>/dev/null && break
  kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; die "tlsgate-impair failed to start"; }
  sleep 0.1
done
grep -q 'tlsgate-impair: running' "$log" || { cat "$log" >&2; die "tlsgate-impair did not start within 10 s"; }
echo "lab-impair.sh: $link impaired through $ns (pid $pid): A->B [${a_to_b}] B->A [${b_to_a}]; log $log"
