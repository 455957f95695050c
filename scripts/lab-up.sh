#!/usr/bin/env bash
# scripts/lab-up.sh — (re)create the tlsgate namespace lab (see lab-env.sh).
#
# Usage: scripts/lab-up.sh   (root; always starts with scripts/lab-down.sh)
# Result: tg-cli/cli0 <-veth-> tg-gw/gwc0   tg-gw/gws0 <-veth-> tg-srv/srv0,
# plus the inspection port pair tg-gw/gwio0 <-veth-> tg-box/boxo0 and
# tg-gw/gwii0 <-veth-> tg-box/boxi0. tg-box forwards nothing until a box is
# started in it with scripts/inspect-box.sh (bridge + recorder, or blockbox).
# Nothing forwards between gwc0 and gws0 until tlsgate (or testpmd) runs in
# tg-gw, so client->server traffic fails until then. The mirror port
# tg-gw/gwm0 <-veth-> tg-sensor/sens0 takes the copy of the plaintext
# ([ports.mirror]); a passive sensor (tshark, an IDS) listens on sens0. The gw namespace has no
# addresses and IPv6 disabled, so its kernel never transmits a frame itself;
# the same holds for tg-box and tg-sensor.
# All offloads are disabled on the ten veth ends so DPDK's af_packet PMD sees
# real, fully checksummed, untagged-in-metadata, MTU-sized frames.
set -euo pipefail
here="$(dirname "${BASH_SOURCE[0]}")"
# shellcheck source=scripts/lab-env.sh
. "$here/lab-env.sh"

[[ $(id -u) -eq 0 ]] || { echo "lab-up.sh: must run as root" >&2; exit 1; }
"$here/lab-down.sh"

offloads_off() { tg_offloads_off "$@"; }   # lab-env.sh

for ns in "$TG_NS_CLI" "$TG_NS_GW" "$TG_NS_SRV" "$TG_NS_BOX" "$TG_NS_SENSOR"; do
  ip netns add "$ns"
  ip -n "$ns" link set lo up
done

# Appliance namespace: IPv6 off *before* any interface exists, so no link-local
# address, DAD, MLD or RS is ever emitted there. No IPv4 address is ever added.
# The box namespace gets the same treatment (and never routes: no addresses,
# no routes, forwarding off), so a box that is not running forwards nothing.
for ns in "$TG_NS_GW" "$TG_NS_BOX" "$TG_NS_SENSOR"; do
  ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1
  ip netns exec "$ns" sysctl -qw net.ipv6.conf.default.disable_ipv6=1
done
ip netns exec "$TG_NS_BOX" sysctl -qw net.ipv4.ip_forward=0
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
# Inspection port pair: inspect_out (gwio0) -> box -> inspect_in (gwii0).
ip link add "$TG_GWIO_IF" netns "$TG_NS_GW" mtu "$TG_MTU" type veth \
   peer name "$TG_BOXO_IF" netns "$TG_NS_BOX" mtu "$TG_MTU"
ip link add "$TG_GWII_IF" netns "$TG_NS_GW" mtu "$TG_MTU" type veth \
   peer name "$TG_BOXI_IF" netns "$TG_NS_BOX" mtu "$TG_MTU"
# Mirror port: gwm0 (transmit only) -> the sensor's sens0.
ip link add "$TG_GWM_IF" netns "$TG_NS_GW" mtu "$TG_MTU" type veth \
   peer name "$TG_SENSOR_IF" netns "$TG_NS_SENSOR" mtu "$TG_MTU"

for ifc in "$TG_GWC_IF" "$TG_GWS_IF" "$TG_GWIO_IF" "$TG_GWII_IF" "$TG_GWM_IF"; do
  ip netns exec "$TG_NS_GW" sysctl -qw "net.ipv6.conf.$ifc.disable_ipv6=1"
  offloads_off "$TG_NS_GW" "$ifc"
  ip -n "$TG_NS_GW" link set dev "$ifc" promisc on up
done
for ifc in "$TG_BOXO_IF" "$TG_BOXI_IF"; do
  ip netns exec "$TG_NS_BOX" sysctl -qw "net.ipv6.conf.$ifc.disable_ipv6=1"
  offloads_off "$TG_NS_BOX" "$ifc"
  ip -n "$TG_NS_BOX" link set dev "$ifc" up
done
ip netns exec "$TG_NS_SENSOR" sysctl -qw "net.ipv6.conf.$TG_SENSOR_IF.disable_ipv6=1"
offloads_off "$TG_NS_SENSOR" "$TG_SENSOR_IF"
ip -n "$TG_NS_SENSOR" link set dev "$TG_SENSOR_IF" promisc on up
offloads_off "$TG_NS_CLI" "$TG_CLI_IF"
offloads_off "$TG_NS_SRV" "$TG_SRV_IF"

ip -n "$TG_NS_CLI" addr add "$TG_CLI_V4/$TG_V4_PREFIX" dev "$TG_CLI_IF"
ip -n "$TG_NS_CLI" addr add "$TG_CLI_V6/$TG_V6_PREFIX" dev "$TG_CLI_IF" nodad
ip -n "$TG_NS_CLI" link set dev "$TG_CLI_IF" up
ip -n "$TG_NS_SRV" addr add "$TG_SRV_V4/$TG_V4_PREFIX" dev "$TG_SRV_IF"
ip -n "$TG_NS_SRV" addr add "$TG_SRV_V6/$TG_V6_PREFIX" dev "$TG_SRV_IF" nodad
ip -n "$TG_NS_SRV" link set dev "$TG_SRV_IF" up

# Sanity: the gw, box and sensor namespaces must have no addresses at all.
for ns in "$TG_NS_GW" "$TG_NS_BOX" "$TG_NS_SENSOR"; do
  if ip -n "$ns" -o addr show | grep -v ' lo ' | grep -q inet; then
    echo "lab-up.sh: unexpected address in $ns" >&2; exit 1
  fi
done
echo "lab-up.sh: lab up: $TG_NS_CLI/$TG_CLI_IF ($TG_CLI_V4, $TG_CLI_V6) <-> $TG_NS_GW/$TG_GWC_IF|$TG_GWS_IF <-> $TG_NS_SRV/$TG_SRV_IF ($TG_SRV_V4, $TG_SRV_V6)"
echo "lab-up.sh: mirror port: $TG_NS_GW/$TG_GWM_IF -> $TG_NS_SENSOR/$TG_SENSOR_IF"
echo "lab-up.sh: inspection ports: $TG_NS_GW/$TG_GWIO_IF <-> $TG_NS_BOX/$TG_BOXO_IF [box] $TG_NS_BOX/$TG_BOXI_IF <-> $TG_NS_GW/$TG_GWII_IF (no box running)"
