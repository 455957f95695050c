# shellcheck shell=bash
# scripts/lab-env.sh — shared names/addresses of the tlsgate namespace lab.
# Sourced (not executed) by lab-up.sh, lab-down.sh, demo.sh and the tests:
#     . "$(dirname "$0")/lab-env.sh"
#
#   tg-cli: cli0 (02:00:00:00:00:01, 198.18.0.1/24, 2001:2::1/64)
#             |  veth
#   tg-gw:  gwc0 ==[ tlsgate / DPDK af_packet ]== gws0   (no IPs, IPv6 off)
#             |  veth
#   tg-srv: srv0 (02:00:00:00:00:02, 198.18.0.2/24, 2001:2::2/64)
#
# Client and server share ONE subnet; the appliance is a bump in the wire.
# Each variable may be overridden from the environment, but configs/lab.toml
# hard-codes the gw interface names (gwc0/gws0).

: "${TG_NS_CLI:=tg-cli}"
: "${TG_NS_GW:=tg-gw}"
: "${TG_NS_SRV:=tg-srv}"
: "${TG_CLI_IF:=cli0}"
: "${TG_SRV_IF:=srv0}"
: "${TG_GWC_IF:=gwc0}"
: "${TG_GWS_IF:=gws0}"
: "${TG_CLI_MAC:=02:00:00:00:00:01}"
: "${TG_SRV_MAC:=02:00:00:00:00:02}"
: "${TG_CLI_V4:=198.18.0.1}"
: "${TG_SRV_V4:=198.18.0.2}"
: "${TG_V4_PREFIX:=24}"
: "${TG_CLI_V6:=2001:2::1}"
: "${TG_SRV_V6:=2001:2::2}"
: "${TG_V6_PREFIX:=64}"
: "${TG_MTU:=1500}"

export TG_NS_CLI TG_NS_GW TG_NS_SRV TG_CLI_IF TG_SRV_IF TG_GWC_IF TG_GWS_IF \
       TG_CLI_MAC TG_SRV_MAC TG_CLI_V4 TG_SRV_V4 TG_V4_PREFIX TG_CLI_V6 TG_SRV_V6 \
       TG_V6_PREFIX TG_MTU

# Run a command inside one lab namespace: tg_in "$TG_NS_CLI" ping -c1 "$TG_SRV_V4"
tg_in() { local ns="$1"; shift; ip netns exec "$ns" "$@"; }
