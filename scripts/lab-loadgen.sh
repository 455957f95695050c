#!/usr/bin/env bash
# scripts/lab-loadgen.sh — turn the namespace lab into a load-generator lab:
# both hosts' veth ends (tg-cli/cli0 and tg-srv/srv0) move into one namespace,
# tg-lg, stripped of their addresses and with IPv6 off, so that its kernel
# neither answers nor emits anything and tlsgate-loadgen (DPDK af_packet on
# cli0 and srv0) alone plays every client and every origin.
#
#   tg-lg: cli0 ==[ tlsgate-loadgen ]== srv0
#            |                            |
#   tg-gw: gwc0 ====[ tlsgate ]====== gws0
#
# Usage: scripts/lab-loadgen.sh   (root; runs scripts/lab-up.sh first)
# scripts/lab-down.sh removes tg-lg with the rest.
set -euo pipefail
here="$(dirname "${BASH_SOURCE[0]}")"
# shellcheck source=scripts/lab-env.sh
. "$here/lab-env.sh"

[[ $(id -u) -eq 0 ]] || { echo "lab-loadgen.sh: must run as root" >&2; exit 1; }
"$here/lab-up.sh" >/dev/null
ip netns add "$TG_NS_LG"
ip -n "$TG_NS_LG" link set lo up
ip netns exec "$TG_NS_LG" sysctl -qw net.ipv6.conf.all.disable_ipv6=1
ip netns exec "$TG_NS_LG" sysctl -qw net.ipv6.conf.default.disable_ipv6=1
ip -n "$TG_NS_CLI" link set "$TG_CLI_IF" netns "$TG_NS_LG"
ip -n "$TG_NS_SRV" link set "$TG_SRV_IF" netns "$TG_NS_LG"
for ifc in "$TG_CLI_IF" "$TG_SRV_IF"; do
  ip netns exec "$TG_NS_LG" sysctl -qw "net.ipv6.conf.$ifc.disable_ipv6=1"
  ip -n "$TG_NS_LG" addr flush dev "$ifc"
  tg_offloads_off "$TG_NS_LG" "$ifc"
  ip -n "$TG_NS_LG" link set dev "$ifc" promisc on up
done
if ip -n "$TG_NS_LG" -o addr show | grep -v ' lo ' | grep -q inet; then
  echo "lab-loadgen.sh: unexpected address in $TG_NS_LG" >&2; exit 1
fi
echo "lab-loadgen.sh: $TG_NS_LG/$TG_CLI_IF <-> $TG_NS_GW/$TG_GWC_IF|$TG_GWS_IF <-> $TG_NS_LG/$TG_SRV_IF"
