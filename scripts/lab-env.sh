# shellcheck shell=bash
# scripts/lab-env.sh — shared names/addresses of the tlsgate namespace lab.
# Sourced (not executed) by lab-up.sh, lab-down.sh, demo.sh and the tests:
#     . "$(dirname "$0")/lab-env.sh"
#
#   tg-cli: cli0 (02:00:00:00:00:01, 198.18.0.1/24, 2001:2::1/64)
#             |  veth
#   tg-gw:  gwc0 ==[ tlsgate / DPDK af_packet ]== gws0   (no IPs, IPv6 off;
#                                                        the driver: TLSGATE_LAB_DRIVER)
#             |  veth
#   tg-srv: srv0 (02:00:00:00:00:02, 198.18.0.2/24, 2001:2::2/64)
#
#   tg-gw:  gwio0 (inspect_out)            gwii0 (inspect_in)   (no IPs, IPv6 off)
#             |  veth                        |  veth
#   tg-box: boxo0 ====[ inspection box ]==== boxi0   (no IPs, IPv6 off)
#
#   tg-gw:  gwm0 (mirror port: transmit only)
#             |  veth
#   tg-sensor: sens0   (a passive sensor listens here: tshark, an IDS; no IPs,
#                       IPv6 off)
#
# Client and server share ONE subnet; the appliance is a bump in the wire.
# The inspection port pair carries each intercepted connection's plaintext out
# of gwio0, through the black box in tg-box (scripts/inspect-box.sh: nothing,
# a bridge with a recorder, or tests/lab/blockbox.py), and back into gwii0.
# The mirror port carries a copy of each intercepted connection's plaintext
# as synthetic TCP frames to sens0 ([ports.mirror] device = ...iface=gwm0).
# Each variable may be overridden from the environment, but configs/lab.toml
# hard-codes the gw interface names (gwc0/gws0).

: "${TG_NS_CLI:=tg-cli}"
: "${TG_NS_GW:=tg-gw}"
: "${TG_NS_SRV:=tg-srv}"
: "${TG_NS_LG:=tg-lg}"   # the load generator's namespace (scripts/lab-loadgen.sh)
: "${TG_NS_IMP:=tg-imp}" # the impairment element's namespaces are TG_NS_IMP-LINK (scripts/lab-impair.sh)
: "${TG_CLI_IF:=cli0}"
: "${TG_SRV_IF:=srv0}"
: "${TG_GWC_IF:=gwc0}"
: "${TG_GWS_IF:=gws0}"
: "${TG_NS_BOX:=tg-box}"
: "${TG_GWIO_IF:=gwio0}"
: "${TG_GWII_IF:=gwii0}"
: "${TG_BOXO_IF:=boxo0}"
: "${TG_BOXI_IF:=boxi0}"
# The sensor namespace follows the appliance's (tg-gw -> tg-sensor), so a lab
# with other names (the bench scripts') gets its own.
: "${TG_NS_SENSOR:=${TG_NS_GW%-gw}-sensor}"
: "${TG_GWM_IF:=gwm0}"
: "${TG_SENSOR_IF:=sens0}"
: "${TG_CLI_MAC:=02:00:00:00:00:01}"
: "${TG_SRV_MAC:=02:00:00:00:00:02}"
: "${TG_CLI_V4:=198.18.0.1}"
: "${TG_SRV_V4:=198.18.0.2}"
: "${TG_V4_PREFIX:=24}"
: "${TG_CLI_V6:=2001:2::1}"
: "${TG_SRV_V6:=2001:2::2}"
: "${TG_V6_PREFIX:=64}"
: "${TG_MTU:=1500}"

export TG_NS_CLI TG_NS_GW TG_NS_SRV TG_NS_LG TG_NS_IMP TG_CLI_IF TG_SRV_IF TG_GWC_IF TG_GWS_IF \
       TG_NS_BOX TG_GWIO_IF TG_GWII_IF TG_BOXO_IF TG_BOXI_IF \
       TG_NS_SENSOR TG_GWM_IF TG_SENSOR_IF \
       TG_CLI_MAC TG_SRV_MAC TG_CLI_V4 TG_SRV_V4 TG_V4_PREFIX TG_CLI_V6 TG_SRV_V6 \
       TG_V6_PREFIX TG_MTU

# The DPDK driver of tlsgate's ports on the gw veths, for every lab config
# (configs/lab.toml, configs/lab-inspect.toml) a script runs: af_packet
# (the default) or af_xdp. The Rust lab tests read the same variable
# (tests/common/lab.rs, LabDriver).
: "${TLSGATE_LAB_DRIVER:=af_packet}"
export TLSGATE_LAB_DRIVER

# The device spec of lab port INDEX (the vdev's number) on the gw veth IFACE
# with QUEUES queue pairs (one per worker) on $TLSGATE_LAB_DRIVER.
tg_lab_device() {  # index iface [queues]
  local index="$1" iface="$2" queues="${3:-1}"
  case "$TLSGATE_LAB_DRIVER" in
    af_packet) echo "net_af_packet$index,iface=$iface,qpairs=$queues,framesz=2048,blocksz=4096,framecnt=2048" ;;
    af_xdp) echo "net_af_xdp$index,iface=$iface,start_queue=0,queue_count=$queues" ;;
    *) echo "TLSGATE_LAB_DRIVER=$TLSGATE_LAB_DRIVER: expected af_packet or af_xdp" >&2; return 1 ;;
  esac
}

# Prints the lab config FILE with each port's device (net_af_packetN or
# net_af_xdpN) on $TLSGATE_LAB_DRIVER, keeping its number, interface and
# queue count: tg_lab_config configs/lab.toml >"$tmp/lab.toml"
tg_lab_config() {  # file
  local line index iface queues arg args spec
  while IFS= read -r line || [[ -n $line ]]; do
    if [[ $line =~ ^device\ =\ \"net_af_(packet|xdp)([0-9]+),([^\"]*)\"$ ]]; then
      index="${BASH_REMATCH[2]}" iface="" queues=1
      IFS=, read -ra args <<<"${BASH_REMATCH[3]}"
      for arg in "${args[@]}"; do
        case "$arg" in
          iface=*) iface="${arg#iface=}" ;;
          qpairs=* | queue_count=*) queues="${arg#*=}" ;;
        esac
      done
      spec="$(tg_lab_device "$index" "$iface" "$queues")" || return 1
      line="device = \"$spec\""
    fi
    printf '%s\n' "$line"
  done <"$1"
}

# Run a command inside one lab namespace: tg_in "$TG_NS_CLI" ping -c1 "$TG_SRV_V4"
tg_in() { local ns="$1"; shift; ip netns exec "$ns" "$@"; }

# Disable every offload on one interface (each feature separately; unsupported
# ones are ignored) so packet sockets see real, fully checksummed, in-frame
# VLAN-tagged, MTU-sized frames: tg_offloads_off "$TG_NS_GW" "$TG_GWC_IF"
tg_offloads_off() {
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
    ip netns exec "$ns" ethtool -K "$ifc" "$f" off >/dev/null 2>&1 || true
  done
}
