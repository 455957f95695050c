#!/usr/bin/env bash
# scripts/lab-up.sh — (re)create the tlsgate namespace lab (see lab-env.sh).
#
# Usage: scripts/lab-up.sh   (root; always starts with scripts/lab-down.sh)
# Result: tg-cli/cli0 <-veth-> tg-gw/gwc0   tg-gw/gws0 <-veth-> tg-srv/srv0.
# Nothing forwards between gwc0 and gws0 until tlsgate (or testpmd) runs in
# tg-gw, so client->server traffic fails until then. The gw namespace has no
# addresses and IPv6 disabled, so its kernel never transmits a frame itself.
# All offloads are disabled on the four veth ends so DPDK's af_packet PMD sees
# real, fully checksummed, untagged-in-metadata, MTU-sized frames.
set -euo pipefail
here="$(dirname "${BASH_SOURCE[0]}")"
# shellcheck source=scripts/lab-env.sh
. "$here/lab-env.sh"

[[ $(id -u) -eq 0 ]] || { echo "lab-up.sh: must run as root" >&2; exit 1; }
"$here/lab-down.sh"

q() { "$@" >/dev/null 2>&1 || true; }   # best effort, silent

offloads_off() {  # ns ifname — each feature separately; unsupported ones are ignored
  local ns="$1" ifc="$2" f
  for f in rx tx sg tso gso gro lro rxvlan txvlan rxhash ntuple \
           tx-checksum-ip-generic tx-checksum-ipv4 tx-checksum-ipv6 tx-checksum-sctp \
           tx-scatter-gather tx-scatter-gather-fraglist tx-tcp-segmentation \
           tx-tcp-ecn-segmentation tx-tcp-mangleid-segmentation tx-tcp6-segmentation \
           tx-udp-segmentation tx-gso-partial tx-gso-list tx-udp_tnl-segmentation \
           tx-udp_tnl-csum-segmentation tx-gre-segmentation tx-gre-csum-segmentation \
           tx-ipxip4-segmentation tx-ipxip6-segmentation tx-sctp-segmentation \
           tx-vlan-stag-hw-insert rx-vlan-stag-hw-parse rx-vlan-filter \
           rx-gro-list rx-udp-gro-forwarding rx-gro-hw highdma; do
    q ip netns exec "$ns" ethtool -K "$ifc" "$f" off
  done
}

for ns in "$TG_NS_CLI" "$TG_NS_GW" "$TG_NS_SRV"; do
  ip netns add "$ns"
  ip -n "$ns" link set lo up
done

# Appliance namespace: IPv6 off *before* any interface exists, so no link-local
# address, DAD, MLD or RS is ever emitted there. No IPv4 address is ever added.
ip netns exec "$TG_NS_GW" sysctl -qw net.ipv6.conf.all.disable_ipv6=1
ip netns exec "$TG_NS_GW" sysctl -qw net.ipv6.conf.default.disable_ipv6=1
# Endpoints: no DAD / RS so the lab is quiet and addresses are usable at once.
for ns in "$TG_NS_CLI" "$TG_NS_SRV"; do
  for c in all default; do
    ip netns exec "$ns" sysctl -qw "net.ipv6.conf.$c.accept_dad=0"
    ip netns exec "$ns" sysctl -qw "net.ipv6.conf.$c.dad_transmits=0"
    ip netns exec "$ns" sysctl -qw "net.ipv6.conf.$c.router_solicitations=0"
    ip netns exec "$ns" sysctl -qw "net.ipv6.conf.$c.accept_ra=0"
  done
done

# veth pairs created directly inside their namespaces (nothing in the root ns).
ip link add "$TG_CLI_IF" netns "$TG_NS_CLI" mtu "$TG_MTU" address "$TG_CLI_MAC" type veth \
   peer name "$TG_GWC_IF" netns "$TG_NS_GW" mtu "$TG_MTU"
ip link add "$TG_SRV_IF" netns "$TG_NS_SRV" mtu "$TG_MTU" address "$TG_SRV_MAC" type veth \
   peer name "$TG_GWS_IF" netns "$TG_NS_GW" mtu "$TG_MTU"

for ifc in "$TG_GWC_IF" "$TG_GWS_IF"; do
  ip netns exec "$TG_NS_GW" sysctl -qw "net.ipv6.conf.$ifc.disable_ipv6=1"
  offloads_off "$TG_NS_GW" "$ifc"
  ip -n "$TG_NS_GW" link set dev "$ifc" promisc on up
done
offloads_off "$TG_NS_CLI" "$TG_CLI_IF"
offloads_off "$TG_NS_SRV" "$TG_SRV_IF"

ip -n "$TG_NS_CLI" addr add "$TG_CLI_V4/$TG_V4_PREFIX" dev "$TG_CLI_IF"
ip -n "$TG_NS_CLI" addr add "$TG_CLI_V6/$TG_V6_PREFIX" dev "$TG_CLI_IF" nodad
ip -n "$TG_NS_CLI" link set dev "$TG_CLI_IF" up
ip -n "$TG_NS_SRV" addr add "$TG_SRV_V4/$TG_V4_PREFIX" dev "$TG_SRV_IF"
ip -n "$TG_NS_SRV" addr add "$TG_SRV_V6/$TG_V6_PREFIX" dev "$TG_SRV_IF" nodad
ip -n "$TG_NS_SRV" link set dev "$TG_SRV_IF" up

# Sanity: the gw namespace must have no addresses at all.
if ip -n "$TG_NS_GW" -o addr show | grep -v ' lo ' | grep -q inet; then
  echo "lab-up.sh: unexpected address in $TG_NS_GW" >&2; exit 1
fi
echo "lab-up.sh: lab up: $TG_NS_CLI/$TG_CLI_IF ($TG_CLI_V4, $TG_CLI_V6) <-> $TG_NS_GW/$TG_GWC_IF|$TG_GWS_IF <-> $TG_NS_SRV/$TG_SRV_IF ($TG_SRV_V4, $TG_SRV_V6)"
